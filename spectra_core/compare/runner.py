"""The comparison engine: splits, equal budgets, then per arm an LR grid on the validation split and
every seed at the chosen LR, each (arm, LR, seed) in its own subprocess; results resume; a report.

Output directory::

    results.jsonl   every finished job (cells, parameter counts, base-model memory), appended as it ends
    summary.json    the table's rows and the setup line
    table.md        setup line + markdown table
    pareto.png      held-out loss vs trainable parameters and vs step time
    data/           train.jsonl, validation.jsonl, heldout.jsonl, splits.json
    logs/           one log per job
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..config import DataConfig, load_config
from ..errors import ConfigError, TrainingError
from .config import Cell, CompareConfig
from .splits import Splits, fingerprint, make_splits
from .store import ResultStore, job_key


class JobFailed(TrainingError):
    """A worker subprocess exited with an error."""


class NotRecorded(LookupError):
    """A report-only compare needed a job that is not in ``results.jsonl`` yet."""


class Interrupted(RuntimeError):
    """A job whose subprocess was stopped because the compare itself was interrupted."""


class Compare:
    """One compare: ``run()`` executes what is not in ``results.jsonl`` yet and writes the report.

    ``jobs`` subprocesses run at once (each with the config's ``threads``); a job's key and result do not
    depend on it, only its measured step time does (the cells then share the machine)."""

    def __init__(self, config: CompareConfig, out: Path, *, keep_runs: bool = False, report_only: bool = False,
                 jobs: int = 1) -> None:
        if jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {jobs}", hint="pass --jobs 1 or more")
        self.config = config
        self.jobs = jobs
        self.report_only = report_only  # never start a job: report only what results.jsonl holds
        self.out = Path(out)
        self.keep_runs = keep_runs
        self.store = ResultStore(self.out / "results.jsonl")
        self.splits: Splits | None = None
        self._budgets: dict[str, dict[str, Any]] = {}  # arm -> the solved allocator options overlay
        self.solved: dict[str, dict[str, Any]] = {}  # arm -> {target, parameters, knob, value}
        self._running: set[subprocess.Popen] = set()  # job subprocesses, stopped when the compare is interrupted
        self._stopping = False
        self._lock = threading.Lock()

    # ----- setup -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Cut the data and validate every arm's run config (errors name the arm) before any job runs."""
        base_data = self.config.base.get("data")
        if not isinstance(base_data, dict):
            raise ConfigError("the compare's base run config has no data section",
                              hint="add data: {path: FILE} to the base config")
        self.splits = make_splits(DataConfig.model_validate(base_data), self.config.split, self.out / "data")
        for arm in self.config.arms:
            try:
                load_config(data=self.cell_config(Cell(arm, self.config.budget.learning_rates[0],
                                                       self.config.budget.seeds[0])))
            except ConfigError as exc:
                raise ConfigError(f"arm {arm}: {exc.message}", hint=exc.hint) from None

    def cell_config(self, cell: Cell, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run config of one cell: base ⊕ arm ⊕ solved budget, on the training split, this LR and seed."""
        from .config import merge_overlay

        b = self.config.budget
        data = merge_overlay(self.config.arm_config(cell.arm, cell.seed), overlay or self._budgets.get(cell.arm, {}))
        data["data"] = self.splits.data_section(data["data"])
        training = data.setdefault("training", {})
        training.update(max_steps=b.steps, learning_rate=cell.lr, seed=cell.seed, eval_every=b.steps,
                        save_every=b.steps, log_every=1, warmup_steps=max(1, b.steps // 10))
        if b.eval_batches:
            training["eval_batches"] = b.eval_batches
        data["exporters"] = []
        data["output_dir"] = str(self.out / "runs" / cell.arm / f"lr{cell.lr:g}-seed{cell.seed}")
        return data

    def _key_spec(self, job: str, config: dict[str, Any]) -> dict[str, Any]:
        """What decides a job's result: its config with file paths replaced by content hashes."""
        config = json.loads(json.dumps(config))
        config.pop("output_dir", None)
        for k in ("path", "validation_path"):
            if config.get("data", {}).get(k):
                config["data"][k] = fingerprint(config["data"][k])
        return {"job": job, "config": config, "validation": fingerprint(self.splits.validation),
                "threads": self.config.threads}

    # ----- jobs ------------------------------------------------------------------------------------
    def _job(self, job: str, config: dict[str, Any], label: str, meta: dict[str, Any], *,
             key_config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Run (or recall) one worker job; its key hashes ``key_config`` (default ``config``) and ``extra``."""
        key = job_key({**self._key_spec(job, key_config or config), **extra})
        found = self.store.get(key)
        if found is not None:
            return found
        if self.report_only:
            raise NotRecorded(label)
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / (label.replace("/", "_") + ".log")
        spec = {"job": job, "config": config, "validation_path": self.splits.validation,
                "threads": self.config.threads, **extra}
        with tempfile.TemporaryDirectory(prefix="spectra-compare-") as tmp:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            env = {**os.environ, "OMP_NUM_THREADS": str(self.config.threads), "TOKENIZERS_PARALLELISM": "false"}
            with open(log, "w", encoding="utf-8") as fh:
                with self._lock:
                    if self._stopping:
                        raise Interrupted(label)
                    proc = subprocess.Popen([sys.executable, "-m", "spectra_core.compare.worker", str(spec_path),
                                             str(result_path)], stdout=fh, stderr=subprocess.STDOUT, env=env)
                    self._running.add(proc)
                try:
                    code = proc.wait()
                finally:
                    with self._lock:
                        self._running.discard(proc)
            if self._stopping:
                raise Interrupted(label)
            if code or not result_path.is_file():
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                self.store.append(key, {"job": job, **meta}, error=tail)
                raise JobFailed(f"{label} failed (exit {code}); log {log}:\n{tail}",
                                hint="fix the arm's config (see the log); rerun to resume, finished cells are kept")
            result = json.loads(result_path.read_text(encoding="utf-8"))
        self.store.append(key, {"job": job, **meta}, result)
        return result

    def parameters(self, arm: str, stack: tuple[str, ...] = ()) -> int:
        """Trainable parameters of ``arm``'s plan (its budget solved first when it matches another)."""
        if arm in stack:
            raise ConfigError(f"match cycle: {' -> '.join((*stack, arm))}",
                              hint="let one arm of the cycle set its budget")
        self.resolve_budget(arm, (*stack, arm))
        config = self.cell_config(Cell(arm, self.config.budget.learning_rates[0], self.config.budget.seeds[0]))
        return self._job("params", config, f"params-{arm}", {"arm": arm})["parameters"]

    def resolve_budget(self, arm: str, stack: tuple[str, ...] = ()) -> None:
        """Solve ``match``: set the arm's rank/fraction so its parameters are within tolerance of the target."""
        spec = self.config.arms[arm]
        if spec.match is None or arm in self._budgets:
            return
        target = spec.match if isinstance(spec.match, int) else self.parameters(spec.match, stack or (arm,))
        b = self.config.budget
        solved = self._job("params", self.cell_config(Cell(arm, b.learning_rates[0], b.seeds[0]), overlay={}),
                           f"solve-{arm}", {"arm": arm, "target": target}, target=target, knob=spec.solve,
                           tolerance=spec.tolerance)
        self._budgets[arm] = {"allocator": {"options": solved["options"]}}
        self.solved[arm] = {"target": target, **solved}

    def _resolve_budgets(self, pool: ThreadPoolExecutor) -> None:
        """Solve every arm's ``match``, in waves: the arms whose target is settled, their solves in parallel
        (each target arm's parameters counted once first)."""
        pending = [a for a, spec in self.config.arms.items() if spec.match is not None and a not in self._budgets]
        while pending:
            wave = [a for a in pending if self.config.arms[a].match not in pending]
            if not wave:
                self.resolve_budget(pending[0])  # every pending arm waits on another: raises the match-cycle error
            targets = {m for a in wave if isinstance(m := self.config.arms[a].match, str)}  # arm names, not counts
            list(pool.map(self.parameters, targets))
            list(pool.map(self.resolve_budget, wave))
            pending = [a for a in pending if a not in wave]

    def _base_memory_job(self, arm: str) -> tuple[dict[str, Any], dict[str, Any], str]:
        cfg = self.cell_config(Cell(arm, 1e-3, self.config.budget.seeds[0]))
        resolved = load_config(data=cfg)
        key = {"model": resolved.model.model_dump(), "quantizer": resolved.quantizer.model_dump()}
        return cfg, key, f"base-memory-{resolved.quantizer.name}"

    def base_memory(self, arm: str) -> dict[str, Any]:
        """Peak memory of loading the arm's base model with its quantizer (one job per model + quantizer)."""
        cfg, key, label = self._base_memory_job(arm)
        return self._job("base-memory", cfg, label, {"arm": arm}, key_config=key)

    def base_memory_key(self, arm: str) -> str:
        return job_key(self._key_spec("base-memory", self._base_memory_job(arm)[1]))

    # ----- cells -----------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        config = self.cell_config(cell)
        result = self._job("cell", config, cell.label, {"arm": cell.arm, "lr": cell.lr, "seed": cell.seed,
                                                              "parallel_jobs": self.jobs})
        if not self.keep_runs:
            shutil.rmtree(config["output_dir"], ignore_errors=True)
        return result

    def cell_result(self, cell: Cell) -> dict[str, Any] | None:
        return self.store.get(job_key(self._key_spec("cell", self.cell_config(cell))))

    def chosen_lr(self, arm: str) -> float | None:
        """The grid LR with the lowest mean VALIDATION loss over the tune seeds (None until all have run,
        or when every LR diverged); an LR that diverged on any tune seed is not chosen."""
        b = self.config.budget
        means = {}
        for lr in b.learning_rates:
            found = [self.cell_result(Cell(arm, lr, s)) for s in b.tune_seeds]
            if any(r is None for r in found):
                return None
            if all(r.get("validation_loss") is not None for r in found):
                means[lr] = statistics.fmean(r["validation_loss"] for r in found)
        return min(means, key=means.__getitem__) if means else None

    def cells(self, arm: str) -> list[Cell]:
        """The arm's grid cells, then (once its LR is chosen) its remaining seeds."""
        b = self.config.budget
        grid = [Cell(arm, lr, s) for lr in b.learning_rates for s in b.tune_seeds]
        lr = self.chosen_lr(arm)
        return grid + ([Cell(arm, lr, s) for s in b.seeds if s not in b.tune_seeds] if lr is not None else [])

    def report(self) -> dict[str, Any]:
        """Re-render the report from ``results.jsonl`` alone; arms whose budget was not solved yet show as not run."""
        from .report import write_report

        self.report_only = True
        self.prepare()
        for arm in self.config.arms:
            try:
                self.resolve_budget(arm)
            except NotRecorded:
                continue
        return write_report(self)

    def run(self, arms: list[str] | None = None, *, progress: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from .report import write_report

        self.prepare()
        arms = arms or list(self.config.arms)
        unknown = [a for a in arms if a not in self.config.arms]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(self.config.arms)}",
                              hint="pass names from the compare config's arms")
        b = self.config.budget
        per_arm = len(b.learning_rates) * len(b.tune_seeds) + len([s for s in b.seeds if s not in b.tune_seeds])
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="compare-job")
        try:
            self._resolve_budgets(pool)  # every arm: the report pairs and locates all of them
            for arm in arms:
                self.base_memory(arm)
            done = sum(1 for arm in arms for c in self.cells(arm) if self.cell_result(c) is not None)
            with tqdm(total=per_arm * len(arms), initial=done, desc="compare", unit="run", disable=not progress,
                      dynamic_ncols=True) as bar:
                failed = self._run_cells(arms, pool, bar)
        except BaseException:
            self._stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        summary = write_report(self)
        if failed:
            raise JobFailed(f"{len(failed)} run(s) failed: {', '.join(failed)}",
                            hint=f"see {self.out / 'logs'}; rerun the same command to retry them "
                                 "(finished runs are kept)")
        return summary

    def _run_cells(self, arms: list[str], pool: ThreadPoolExecutor, bar: Any) -> list[str]:
        """Keep ``jobs`` cells running, arms in order (an arm's seeds become ready once its grid has chosen
        the LR); the report is rewritten after each finished cell. Returns the failed cells' labels."""
        from .report import write_report

        running: dict[Future, Cell] = {}
        started: set[Cell] = set()
        failed: list[str] = []
        while True:
            ready = (c for arm in arms for c in self.cells(arm) if c not in started and self.cell_result(c) is None)
            for cell in ready:
                if len(running) >= self.jobs:
                    break
                started.add(cell)
                running[pool.submit(self.run_cell, cell)] = cell
            if not running:
                return failed
            bar.set_postfix_str(", ".join(c.label for c in running.values()))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                try:
                    future.result()
                except JobFailed as exc:
                    failed.append(cell.label)
                    bar.write(str(exc))
                bar.update(1)
            write_report(self)

    def _stop(self) -> None:
        """Stop every running job subprocess (the compare was interrupted); their jobs record nothing."""
        with self._lock:
            self._stopping = True
            for proc in self._running:
                proc.terminate()
