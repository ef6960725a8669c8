"""Run-directory safety: what ``train`` may do to an output directory, and replacing a run without loss.

* :func:`check_output_dir` refuses impossible requests (``--resume`` with ``--overwrite``, a file as
  output_dir, nothing to resume, an existing run without ``--overwrite``) before any work.
* :class:`Replacement` moves an earlier run's entries aside into a hidden ``.spectra-replaced-{pid}``
  directory, and removes them only once the new run has written its first checkpoint
  (:meth:`Replacement.commit`); a failure before that restores them (:meth:`Replacement.rollback`),
  and a run killed before that is rolled back on the next start (:func:`recover`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .atomic import check_writable, clean_leftovers, process_alive
from .errors import ConfigError, InputError, TrainingError

log = logging.getLogger(__name__)

RUN_ENTRIES = ("config.yaml", "scores.json", "plan.json", "metrics.jsonl", "checkpoints", "final", "exports",
               "tensorboard", "wandb")  # tensorboard/, wandb/: the trackers of training.report_to
_ASIDE = re.compile(r"^\.spectra-(?P<state>replacing|replaced)-(?P<pid>\d+)$")
STEP_DIR = re.compile(r"^step-(\d{8})$")


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (hidden temp dirs are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds something a run produced that is worth keeping: a checkpoint, the
    final adapter or exports. (Inputs written by a run killed before its first checkpoint are not.)"""
    run_dir = Path(run_dir)
    return bool(list_checkpoints(run_dir / "checkpoints")) or (run_dir / "final").exists() or (run_dir / "exports").exists()


def check_flags(*, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other (continue the run, or replace it?)",
                          hint="pass --resume to continue the run in output_dir, or --overwrite to start it again")


def check_output_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse what ``train`` cannot do with ``run_dir``, before anything is loaded or written (reads only;
    call :func:`recover` first, in one process)."""
    run_dir = Path(run_dir)
    check_flags(resume=resume, overwrite=overwrite)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output_dir {run_dir} is a file, not a directory",
                         hint="set output_dir to a new or existing directory (e.g. output_dir=runs/my-run)")
    check_writable(run_dir, "output_dir")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise TrainingError(f"nothing to resume in {run_dir} (no config.yaml)",
                                hint="start the run without --resume")
        if not list_checkpoints(run_dir / "checkpoints"):
            if (run_dir / "final").exists():
                raise TrainingError(f"cannot resume {run_dir}: the run is finished and kept no checkpoint",
                                    hint="its adapter is in final/ (`spectra export` writes its exports); "
                                         "to train again pass --overwrite instead of --resume")
            raise TrainingError(f"cannot resume {run_dir}: it has no checkpoint (the run stopped before "
                                "its first one)", hint="start it again without --resume")
        return
    if holds_run(run_dir) and not overwrite:
        raise TrainingError(f"output directory {run_dir} already holds a run",
                            hint="pass --resume to continue it or --overwrite to replace it "
                                 "(or set output_dir elsewhere)")


def clean_run_leftovers(run_dir: Path) -> None:
    """Remove hidden temp entries that killed writers left in the run dir, its checkpoints and exports."""
    for directory in (run_dir, run_dir / "checkpoints", run_dir / "exports"):
        for path in clean_leftovers(directory):
            log.info("removed %s (left by a killed process)", path)


def recover(run_dir: Path) -> None:
    """Roll back a replacement whose process died before the new run's first checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for aside in run_dir.iterdir():
        match = _ASIDE.match(aside.name)
        if match and not process_alive(int(match["pid"])):
            # "replacing": killed while moving the old entries aside, before the new run wrote anything
            Replacement(run_dir, aside=aside, kept=_visible(run_dir) if match["state"] == "replacing" else set()
                        ).rollback()
            log.warning("restored the earlier run in %s: the run replacing it was killed before its "
                        "first checkpoint", run_dir)
    clean_run_leftovers(run_dir)


def _visible(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")} if directory.is_dir() else set()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Replacement:
    """The run in ``run_dir`` is being replaced by a new run (see the module docstring).

    A directory holding any run entry is a run directory: all its visible entries (plugins' own
    records included) belong to the run and are moved aside together. Other directories keep their
    files; a rollback removes only what the new run added.
    """

    def __init__(self, run_dir: Path, *, aside: Path | None = None, kept: set[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.aside = aside
        self.kept: set[str] = kept or set()
        self.created = False
        self.done = False

    def begin(self) -> Replacement:
        """Move an earlier run's entries aside (a rename each: nothing is copied or deleted)."""
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        present = _visible(self.run_dir)
        if present & set(RUN_ENTRIES):
            moving = self.run_dir / f".spectra-replacing-{os.getpid()}"
            moving.mkdir()
            for name in sorted(present):
                os.replace(self.run_dir / name, moving / name)
            self.aside = self.run_dir / f".spectra-replaced-{os.getpid()}"
            os.replace(moving, self.aside)  # all moved: from now on the visible entries are the new run's
        else:
            self.kept = present
        return self

    def commit(self) -> None:
        """The new run has a checkpoint: delete the earlier run's entries for good."""
        if not self.done and self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.done = True

    def rollback(self) -> None:
        """Remove what the new run wrote and put the earlier run's entries back."""
        if self.done:
            return
        for name in _visible(self.run_dir) - self.kept:
            _remove(self.run_dir / name)
        if self.aside is not None:
            for moved in self.aside.iterdir():
                os.replace(moved, self.run_dir / moved.name)
            self.aside.rmdir()
        elif self.created and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()
        self.done = True
