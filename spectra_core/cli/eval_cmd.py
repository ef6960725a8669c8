"""`spectra eval RUN_DIR|MODEL_DIR [--data FILE] [--tasks T ...]`: held-out loss / perplexity and lm-eval tasks."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from spectra_core.errors import InputError

from .app import app


@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(..., help="A finished run directory, or a model directory (e.g. a merged export)."),
    data: Path = typer.Option(None, "--data", help="Data file for held-out loss / perplexity (default for a run: "
                              "its validation_path, if set)."),
    data_format: str = typer.Option(None, "--format", help="text, instruction, chat or seq2seq (default: the "
                                    "run's data.format, else text; seq2seq for an encoder-decoder)."),
    tasks: list[str] = typer.Option(None, "--tasks", help="lm-eval task YAML file or bundled task name "
                                    "(repeatable or comma-separated); needs lm_eval installed."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate at most N documents per task."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    out: Path = typer.Option(None, "--out", help="Also write the results as JSON here."),
) -> None:
    """Score the trained model (adapter on its base, as training saw it) or a model directory."""
    from spectra_core.atomic import write_text
    from spectra_core.automodel import is_seq2seq
    from spectra_core.config import DataConfig
    from spectra_core.evaluation import heldout_loss, lm_eval_tasks
    from spectra_core.loading import load_for_inference

    names = [t for item in tasks or [] for t in item.split(",") if t]
    loaded = load_for_inference(target)
    run_data = loaded.run.config.data if loaded.run is not None else None
    if data is None and run_data is not None and run_data.validation_path:
        data = Path(run_data.validation_path)
    if data is None and not names:
        raise InputError("nothing to evaluate", hint="pass --data FILE (held-out loss) and/or --tasks TASK "
                                                     "(e.g. --tasks kjv_proverbs_cloze)")
    typer.secho(f"loaded {loaded.description}", err=True, fg=typer.colors.CYAN)
    results: dict = {"target": str(target)}
    if data is not None:
        base = run_data.model_dump() if run_data is not None else {}
        if not data_format and run_data is None and is_seq2seq(loaded.model.config):
            data_format = "seq2seq"
        cfg = DataConfig(**(base | {"path": str(data), "validation_path": None, "max_samples": None}
                            | ({"format": data_format} if data_format else {})))
        results["heldout"] = heldout_loss(loaded.model, loaded.tokenizer, cfg, batch_size=batch_size)
        h = results["heldout"]
        typer.echo(f"held-out loss {h['loss']:.4f}, perplexity {h['perplexity']:.2f} "
                   f"({h['tokens']:,} tokens, {h['examples']} examples of {data})")
    if names:
        results["tasks"] = lm_eval_tasks(loaded.model, loaded.tokenizer, names, limit=limit, batch_size=batch_size)
        for task, metrics in results["tasks"].items():
            typer.echo(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    if out is not None:
        write_text(out, json.dumps(results, indent=2) + "\n")
        typer.echo(f"results written to {out}")
