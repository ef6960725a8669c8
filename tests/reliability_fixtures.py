"""Shared by the reliability tests: one small finished run and scan (made once per session), tree
hashes, an unwritable directory, a dead process id.

Import into a test module with ``from reliability_fixtures import ctx, tiny_model_dir, ...``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from train_fixtures import config_dict, tiny_model_dir, write_text  # noqa: F401


# ----- helpers ---------------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file → sha256, directory → '<dir>' (empty when ``root`` is absent)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): ("<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the directory ``path`` unwritable (chattr +i as root, chmod otherwise); skip if it stays writable."""
    root = os.geteuid() == 0
    if root:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
    else:
        path.chmod(0o555)
    try:
        probe = path / ".probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip(f"{path} stays writable")
        except OSError:
            pass
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


@dataclass
class Ctx:
    """The module's shared inputs: tiny model, data, one finished run (with checkpoint, final, exports), a scan."""

    base: Path
    model: Path
    data: Path
    run: Path
    run_config: dict[str, Any]
    scan: Path
    cache: Path

    def config(self, tmp: Path, name: str = "c.yaml", **changes: Any) -> Path:
        """The run's config with ``section={...}`` updates (a dotted key replaces one value)."""
        data = copy.deepcopy(self.run_config)
        for key, value in changes.items():
            node = data
            *parents, last = key.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        path = tmp / name
        path.write_text(yaml.safe_dump(data))
        return path

    def copy_run(self, tmp: Path) -> Path:
        return Path(shutil.copytree(self.run, tmp / "run-copy", symlinks=True))

    def copy_model(self, tmp: Path) -> Path:
        return Path(shutil.copytree(self.model, tmp / "model-copy"))


@pytest.fixture(scope="session")
def ctx(tmp_path_factory, tiny_model_dir, run_cli) -> Ctx:  # noqa: F811
    base = tmp_path_factory.mktemp("bad-inputs")
    data = write_text(base / "data.txt", 160)
    run = base / "run"
    run_config = config_dict(tiny_model_dir, data, run, max_steps=2, save_every=1, eval_every=2,
                             keep_checkpoints=1, eval_batches=1)
    run_config["exporters"] = [{"name": "peft-adapter"}]
    cfg = base / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config))
    cache = base / "scan-cache"
    env = {"SPECTRA_SCAN_CACHE": str(cache)}
    res = run_cli("train", cfg, env=env)
    assert res.returncode == 0, res.stderr
    assert (run / "final").is_dir() and (run / "exports" / "adapter").is_dir() and (run / "checkpoints").is_dir()
    scan = base / "scan"
    res = run_cli("scan", tiny_model_dir, "--out", scan, "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    return Ctx(base, tiny_model_dir, data, run, run_config, scan, cache)
