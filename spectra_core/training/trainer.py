"""The trainer: plan → peft model → AdamW on accelerate → resumable run directory (see run.py).

Determinism: LoRA init, data order and evaluation depend only on ``training.seed``; the data order is
a pure function of the number of micro-batches consumed, so a resumed run replays exactly what an
uninterrupted one would have done (bitwise on CPU).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import atomic_dir, write_text
from ..data import TokenizedData, check_format, collate, load_data, micro_batch_indices
from ..errors import InputError, TrainingError
from ..plan import AdapterPlan
from ..run import Run
from ..rundir import Replacement, check_output_dir, recover
from ..scores import Scores
from . import checkpoint as ckpt
from .distributed import all_reduce_grads, all_reduce_sum, barrier, make_accelerator
from .loss import lm_loss, summed_eval_loss
from .metrics import PROJECT, TRACKER_DIR, MetricsLog, resolve_trackers, tracker_config
from .modeling import build_peft_model, load_base, trainable_named_parameters
from .optim import lr_factor, make_optimizer, set_lr
from .session import Session

log = logging.getLogger(__name__)

# Keys that may differ on --resume: they change bookkeeping, not the trained weights.
RUNTIME_KEYS = ("output_dir", "exporters", "training.eval_every", "training.eval_batches", "training.save_every",
                "training.keep_checkpoints", "training.log_every", "training.report_to")


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM arrived; a checkpoint was written. ``exit_code`` is 128 + signal number."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted by signal {signum}; checkpoint written to {checkpoint}",
                         hint="continue with `spectra train CONFIG --resume`")
        self.exit_code = 128 + signum


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Differences that matter for resuming (``RUNTIME_KEYS`` ignored), one line each."""
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"  {key}: {a.get(key, '<unset>')!r} (run) -> {b.get(key, '<unset>')!r} (now)")
    return lines


class Trainer:
    """Trains one pipeline's plan; ``train()`` returns the finished :class:`~spectra_core.run.Run`."""

    def __init__(self, pipeline: Any, *, plan: AdapterPlan | None = None, scores: Scores | None = None) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.tcfg = pipeline.config.training
        self.plan = plan.model_copy(deep=True) if plan is not None else None  # the caller's plan stays as given
        self.scores = scores
        self.run_dir = Path(pipeline.output_dir)
        self._signal: int | None = None
        self._replacement: Replacement | None = None

    # ----- run directory -------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool, overwrite: bool, is_main: bool) -> Path | None:
        """Check the output dir (nothing is moved or deleted here); on resume, check the config and
        return the newest checkpoint."""
        if is_main:
            recover(self.run_dir)
        barrier()
        check_output_dir(self.run_dir, resume=resume, overwrite=overwrite)
        if resume:
            diff = config_diff(yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")),
                               self.config.model_dump(mode="json"))
            if diff:
                raise TrainingError("cannot resume: the config differs from the run's config.yaml:\n" + "\n".join(diff),
                                    hint="restore the original values, or start over with --overwrite")
            found = ckpt.list_checkpoints(self.run_dir / "checkpoints")
            if self.plan is None:
                self.plan = ckpt.read_plan(found[-1])
            if self.scores is None and (self.run_dir / "scores.json").is_file():
                self.scores = Scores.load(self.run_dir / "scores.json")
            return found[-1]
        if self.plan is None:
            raise TrainingError("no adapter plan given", hint="call Pipeline.train(), which plans first")
        return None

    def _write_inputs(self) -> None:
        write_text(self.run_dir / "config.yaml",
                   yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        if self.scores is not None:
            self.scores.save(self.run_dir / "scores.json")
        self.plan.save(self.run_dir / "plan.json")

    # ----- data ----------------------------------------------------------------------------------
    def _micro_batch(self, m: int) -> dict[str, torch.Tensor]:
        """This process's share of global micro-batch ``m`` (a pure function of ``m`` and the seed)."""
        idx = micro_batch_indices(m, batch_size=self.tcfg.batch_size, n=len(self.data.train), seed=self.tcfg.seed,
                                  world=self.world, rank=self.rank)
        return self._on_device(collate([self.data.train[i] for i in idx], self.pad_id))

    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the model's device (collate builds it on the CPU)."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _calibration(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        return (self._micro_batch(m) for m in range(n))

    # ----- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> float:
        """Held-out loss per label token (validation split, sharded over processes)."""
        total, count = summed_eval_loss(model, self.data.validation, self.pad_id, batch_size=self.tcfg.batch_size,
                                        max_batches=self.tcfg.eval_batches, rank=self.rank, world=self.world,
                                        device=self.device)
        total, count = all_reduce_sum([total, count])
        return total / max(count, 1.0)

    # ----- signals -------------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        def handler(signum: int, frame: Any) -> None:
            self._signal = signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        return old

    # ----- training ------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, overwrite: bool = False) -> Run:
        from transformers import AutoConfig, AutoTokenizer

        model_dir = self.pipeline.model_dir()
        remote = self.config.model.trust_remote_code
        check_format(self.config.data, AutoConfig.from_pretrained(model_dir, trust_remote_code=remote))  # before any write
        if self.plan is not None:  # before anything is written or replaced
            self.plan.check_init(tied=self.pipeline.gradient_merger is not None)
            if self.pipeline.rebalancer is not None:
                self.pipeline.rebalancer.check_plan(self.plan)
        trackers = resolve_trackers(self.tcfg.report_to, self.run_dir)
        acc = make_accelerator(log_with=trackers, logging_dir=str(self.run_dir / TRACKER_DIR))
        self.rank, self.world, is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.device = acc.device
        start_ckpt = self._prepare_dir(resume, overwrite, is_main)
        barrier()
        self.accelerator = acc
        torch.manual_seed(self.tcfg.seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=remote)
        self.data: TokenizedData = load_data(self.config.data, tokenizer, seed=self.tcfg.seed)
        self.pad_id = tokenizer.pad_token_id

        quantizer = self.pipeline.quantizer
        base = load_base(self.config, quantizer, model_dir, gradient_checkpointing=self.tcfg.gradient_checkpointing)
        model = build_peft_model(base, self.plan, seed=self.tcfg.seed, batches=self._calibration, model_dir=model_dir,
                                 initialize=start_ckpt is None)
        model.to(acc.device)
        model.train()
        optimizer = make_optimizer(model, self.plan, self.tcfg.learning_rate, self.tcfg.weight_decay)
        # Everything checkable was checked: only now is an earlier run moved aside (restored on failure).
        self._replacement = Replacement(self.run_dir).begin() if start_ckpt is None and is_main else None
        try:
            return self._train(model, optimizer, start_ckpt, is_main)
        except BaseException:
            if self._replacement is not None:
                self._replacement.rollback()
            raise

    def _train(self, model: Any, optimizer: torch.optim.Optimizer, start_ckpt: Path | None, is_main: bool) -> Run:
        if self.accelerator.log_with:  # after an earlier run was moved aside, so its tracker files are not reused
            self.accelerator.init_trackers(PROJECT, config=tracker_config(self.config.model_dump(mode="json")),
                                           init_kwargs={"wandb": {"dir": str(self.run_dir), "name": self.run_dir.name}})
        merger = self.pipeline.gradient_merger
        session = Session(model, self.plan, optimizer, batches=self._calibration, lr=self.tcfg.learning_rate,
                          weight_decay=self.tcfg.weight_decay, seed=self.tcfg.seed, run_dir=self.run_dir,
                          merger=merger, is_main_process=is_main)
        if merger is not None and start_ckpt is None:  # on resume the checkpoint's plan has the groups
            self._log_changes(merger.name, session.apply(merger.calibrate(session), strategy=merger.name))

        state = ckpt.TrainState(step=0, micro_batches=0)
        if start_ckpt is not None:
            state = ckpt.load_checkpoint(start_ckpt, model, optimizer)
            session.step = state.step
            log.info("resumed from %s (step %d)", start_ckpt, state.step)
        elif is_main:
            self._write_inputs()
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=is_main, accelerator=self.accelerator,
                             resume_step=state.step if start_ckpt is not None else None)
        if start_ckpt is None:
            stats = {k: vars(v) for k, v in self.data.stats.items()}
            metrics.write({"step": 0, "event": "data", **{f"{k}_{f}": v for k, s in stats.items() for f, v in s.items()}})
            metrics.write({"step": 0, "eval_loss": self.evaluate(model)})
        old_handlers = self._install_signals()
        try:
            self._loop(model, optimizer, session, state, metrics, is_main)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            metrics.close()
        if is_main:
            with atomic_dir(self.run_dir / "final") as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
            self.plan.save(self.run_dir / "plan.json")
            self._commit()
        barrier()
        model.eval()
        return Run(self.run_dir, self.config, self.plan, self.scores, model=model, registry=self.pipeline.registry)

    def _loop(self, model: Any, optimizer: torch.optim.Optimizer, session: Session, state: ckpt.TrainState,
              metrics: MetricsLog, is_main: bool) -> None:
        from tqdm.auto import tqdm

        t = self.tcfg
        rebalancer = self.pipeline.rebalancer
        every = rebalancer.every_steps() if rebalancer is not None else None
        schedule = {"name": t.schedule, "warmup": t.warmup_steps, "total": t.max_steps}
        bar = tqdm(total=t.max_steps, initial=state.step, disable=not is_main, desc="train", dynamic_ncols=True)
        while state.step < t.max_steps:
            started = time.perf_counter()
            lr = t.learning_rate * lr_factor(state.step, warmup=t.warmup_steps, total=t.max_steps, schedule=t.schedule)
            set_lr(optimizer, lr / t.learning_rate)
            loss_sum = tokens = 0.0
            for _ in range(t.gradient_accumulation):
                batch = self._micro_batch(state.micro_batches)
                with session.training_pass():
                    loss, n = lm_loss(model, batch)
                    reduced, count = all_reduce_sum([float(loss.detach()), float(n)])
                    if not math.isfinite(reduced):
                        bar.close()
                        self._fail_nan(state.step + 1)
                    if n:
                        (loss / n / t.gradient_accumulation).backward()
                session.merge_gradients()
                loss_sum, tokens = loss_sum + reduced, tokens + count
                state.micro_batches += 1
            params = [p for _, p in trainable_named_parameters(model)]
            all_reduce_grads(params)
            session.expert_steps.before_step()
            norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
            if not math.isfinite(float(norm)):
                bar.close()
                self._fail_nan(state.step + 1, what="gradient norm")
            optimizer.step()
            session.expert_steps.after_step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += int(tokens)
            session.step = state.step
            elapsed = time.perf_counter() - started
            record = {"step": state.step, "loss": loss_sum / max(tokens, 1.0), "lr": lr, "grad_norm": float(norm),
                      "tokens_per_s": tokens / elapsed, "step_time_s": elapsed}
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                            refresh=False)  # drawn once, by update: one bar line per step in logs
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                metrics.write(record)
            if rebalancer is not None and every and state.step % every == 0 and state.step < t.max_steps:
                self._rebalance(rebalancer, session, metrics)
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                metrics.write({"step": state.step, "eval_loss": self.evaluate(model)})
            stop = all_reduce_sum([float(self._signal or 0)])[0] > 0
            if state.step % t.save_every == 0 or stop:
                path = self._save(model, optimizer, state, schedule, is_main)
                if stop:
                    bar.close()
                    raise TrainingInterrupted(self._signal or signal.SIGTERM, path)
        bar.close()
        if rebalancer is not None:  # always once after training
            self._rebalance(rebalancer, session, metrics)
            metrics.write({"step": state.step, "eval_loss": self.evaluate(model), "after": "rebalance"})

    def _rebalance(self, rebalancer: Any, session: Session, metrics: MetricsLog) -> None:
        """The rebalancer proposes; the session validates, applies and records once; then it is logged."""
        changes = session.apply(rebalancer.rebalance(session), strategy=rebalancer.name)
        self._log_changes(rebalancer.name, changes)
        metrics.write({"step": session.step, "event": "rebalance", "strategy": rebalancer.name,
                       "changes": [c.model_dump(mode="json") for c in changes]})

    @staticmethod
    def _log_changes(strategy: str, changes: list[Any]) -> None:
        modules = sorted({c.module for c in changes})
        log.info("%s changed %d plan field(s) of %d module(s)%s", strategy, len(changes), len(modules),
                 f" (e.g. {modules[0]})" if modules else "")

    def _save(self, model: Any, optimizer: torch.optim.Optimizer, state: ckpt.TrainState,
              schedule: dict[str, Any], is_main: bool) -> Path:
        path = ckpt.step_dir(self.run_dir / "checkpoints", state.step)
        if is_main:
            ckpt.save_checkpoint(self.run_dir / "checkpoints", model, optimizer, state, self.plan,
                                 schedule=schedule, keep=self.tcfg.keep_checkpoints)
            self._commit()
        barrier()
        return path

    def _commit(self) -> None:
        """The new run has its first checkpoint (or final adapter): drop the run it replaced."""
        if self._replacement is not None:
            self._replacement.commit()

    def _fail_nan(self, step: int, what: str = "loss") -> None:
        from ..models import nonfinite_weights

        bad = nonfinite_weights(self.pipeline.model_dir())
        if bad:
            raise InputError(f"the base model's weights hold NaN/Inf values ({len(bad)} tensor(s): "
                             f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}), so the {what} is NaN "
                             f"from step {step}", hint=f"fix or re-download the checkpoint in {self.pipeline.model_dir()}")
        found = ckpt.list_checkpoints(self.run_dir / "checkpoints")
        last = (f"the last good checkpoint is {found[-1]}" if found
                else "no checkpoint was written yet, so the output directory was left as it was")
        raise TrainingError(f"training stopped: the {what} became NaN/inf at step {step}; {last}",
                            hint="lower training.learning_rate, keep training.max_grad_norm set, or check the data; "
                                 "then " + ("--resume or --overwrite" if found else "run the command again"))
