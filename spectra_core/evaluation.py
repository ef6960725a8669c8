"""Evaluate a model: held-out loss / perplexity on a data file, and lm-evaluation-harness tasks.

lm-eval (``pip install 'spectra-qlora[eval]'``) is optional. Tasks are lm-eval custom task YAML files
(``dataset_path: json`` with local ``data_files``, resolved relative to the YAML file) or the names of
tasks bundled in ``spectra_core/tasks/`` (``kjv_proverbs_cloze``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .config import DataConfig
from .errors import InputError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def heldout_loss(model: Any, tokenizer: Any, data: DataConfig, *, batch_size: int = 4) -> dict[str, float]:
    """Loss per label token over every record of ``data.path`` (the run's data format), and its perplexity."""
    import torch

    from .data import check_format, collate, load_records, prepare_tokenizer, tokenize_records
    from .training.loss import lm_loss

    check_format(data, model.config)
    prepare_tokenizer(tokenizer)
    examples, stats = tokenize_records(load_records(data.path), tokenizer, data, data.path)
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(examples[i:i + batch_size], tokenizer.pad_token_id).items()}
            loss, n = lm_loss(model, batch)
            total, count = total + float(loss), count + n
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count), "examples": stats.examples}


def bundled_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _task_file(task: str) -> Path:
    path = Path(task).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"task file not found: {task}", hint="give an lm-eval task YAML file")
        return path
    if (TASKS_DIR / f"{task}.yaml").is_file():
        return TASKS_DIR / f"{task}.yaml"
    raise InputError(f"unknown task {task!r}",
                     hint=f"give an lm-eval task YAML file, or a bundled task: {', '.join(bundled_tasks())}")


def _resolved(path: Path, include: Path) -> str:
    """Copy the task YAML into ``include`` with its local data_files made absolute; return the task name."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "task" not in config:
        raise InputError(f"{path} is not an lm-eval task file (no `task:` key)",
                         hint="see the lm-eval task guide: task, dataset_path, output_type, doc_to_text, ...")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        config["dataset_kwargs"]["data_files"] = {k: _absolute(v, path) for k, v in files.items()}
    elif files is not None:
        config["dataset_kwargs"]["data_files"] = _absolute(files, path)
    (include / path.name).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(config["task"])


def _absolute(files: Any, task_file: Path) -> Any:
    if isinstance(files, list):
        return [_absolute(f, task_file) for f in files]
    resolved = (task_file.parent / files).resolve()
    if not resolved.is_file():
        raise InputError(f"{task_file}: data file {files} not found (looked for {resolved})",
                         hint="data_files are relative to the task YAML file")
    return str(resolved)


def lm_eval_tasks(model: Any, tokenizer: Any, tasks: list[str], *, limit: int | None = None,
                  batch_size: int = 4) -> dict[str, dict[str, Any]]:
    """Run lm-eval tasks through ``lm_eval.simple_evaluate`` on the in-memory model: task → metrics."""
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError("lm-evaluation-harness is not installed", hint="pip install 'spectra-qlora[eval]' (lm_eval)")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    files = [_task_file(t) for t in tasks]
    with tempfile.TemporaryDirectory(prefix="spectra-tasks-") as include:
        names = [_resolved(f, Path(include)) for f in files]
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=include),
                                  limit=limit, log_samples=False)
    return {name: {k.removesuffix(",none"): v for k, v in metrics.items() if isinstance(v, (int, float))}
            for name, metrics in results["results"].items()}
