"""What is guaranteed when things go wrong (see docs/reliability.md), against the real CLI:

* SIGKILL during a scan's or an export's output phase leaves the earlier outputs byte-identical and
  no visible partial output; the next start removes the hidden leftovers;
* ``train --overwrite`` moves the earlier run aside and drops it only at the new run's first
  checkpoint; killed before that, the earlier run is restored on the next start;
* the scan cache key follows the scorer's code;
* a directory another writer published meanwhile (two test workers converting the bundled model) is
  replaced, or kept and refused when overwriting is off.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from reliability_fixtures import Ctx, ctx, dead_pid, tiny_model_dir, tree  # noqa: F401
from train_fixtures import cli_env, spectra_cmd

from spectra_core.atomic import atomic_dir


def _visible(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")}


def _kill_when(proc: subprocess.Popen, appeared, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``appeared()`` is true; False if it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if appeared():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait()
    return False


def _killed_during_output(cmd: list[str], parent: Path, prefix: str, env: dict[str, str]) -> None:
    """Run ``cmd`` until its hidden temp output ``parent/{prefix}*`` appears, then SIGKILL it (retried a few
    times should the command finish first)."""
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _kill_when(proc, lambda: any(p.name.startswith(prefix) for p in parent.iterdir())):
            return
    raise AssertionError(f"{cmd} never showed its temp output {parent}/{prefix}*")


def test_sigkill_during_scan_output_keeps_the_earlier_scan(ctx, tmp_path):  # noqa: F811
    out = tmp_path / "scans" / "tiny"
    env = {**cli_env(), "SPECTRA_SCAN_CACHE": str(ctx.cache)}
    first = subprocess.run(spectra_cmd("scan", str(ctx.model), "--out", str(out), "--quiet"), env=env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before, visible = tree(out), _visible(out.parent)
    # the other scorer and percent would write other files into the same directory
    cmd = spectra_cmd("scan", str(ctx.model), "--scorer", "random", "--top-percent", "25", "--out", str(out), "--quiet")
    _killed_during_output(cmd, out.parent, ".tiny.tmp-", env)
    assert tree(out) == before
    assert _visible(out.parent) == visible
    assert not any(p.name.startswith("unfrozen_parameters_25") for p in out.iterdir())
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # the leftover is gone
    assert (out / "unfrozen_parameters_25percent.yaml").is_file()
    assert not (out / "unfrozen_parameters_50percent.yaml").exists()  # one scan's outputs, not a mix


def test_sigkill_during_export_keeps_the_earlier_export(ctx, tmp_path):  # noqa: F811
    run = ctx.copy_run(tmp_path)
    env = cli_env()
    exports = run / "exports"
    first = subprocess.run(spectra_cmd("export", str(run), "--only", "merged"), env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before, visible = tree(exports), _visible(exports)
    _killed_during_output(spectra_cmd("export", str(run), "--only", "merged"), exports, ".merged.tmp-", env)
    assert {k: v for k, v in tree(exports).items() if not k.startswith(".")} == before
    assert _visible(exports) == visible
    again = subprocess.run(spectra_cmd("export", str(run), "--only", "peft-adapter"), env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in exports.iterdir() if p.name.startswith(".")]  # leftovers removed on start


def _replacing_config(c: Ctx, tmp: Path, run: Path, **training) -> Path:
    path = tmp / "replace.yaml"
    path.write_text(yaml.safe_dump(c.run_config | {"output_dir": str(run),
                                                   "training": c.run_config["training"] | training}))
    return path


def test_overwrite_killed_before_its_first_checkpoint_restores_the_earlier_run(ctx, tmp_path):  # noqa: F811
    run = ctx.copy_run(tmp_path)
    before = tree(run)
    cfg = _replacing_config(ctx, tmp_path, run, max_steps=100000, save_every=100000, eval_every=100000)
    proc = subprocess.Popen(spectra_cmd("train", str(cfg), "--overwrite"), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, lambda: any(p.name.startswith(".spectra-replaced-") for p in run.iterdir())
                      and (run / "config.yaml").is_file())  # the new run's own config: inputs written
    aside = [p for p in run.iterdir() if p.name.startswith(".spectra-replaced-")]
    assert len(aside) == 1 and tree(aside[0]) == before  # moved aside whole, nothing deleted yet
    res = subprocess.run(spectra_cmd("train", str(cfg)), env=cli_env(), capture_output=True, text=True)
    assert res.returncode == 2 and "already holds a run" in res.stderr, res.stderr
    assert tree(run) == before


def test_overwrite_drops_the_earlier_run_once_the_new_one_has_a_checkpoint(ctx, tmp_path):  # noqa: F811
    run = ctx.copy_run(tmp_path)
    old_metrics = (run / "metrics.jsonl").read_text()
    cfg = _replacing_config(ctx, tmp_path, run, max_steps=3, save_every=3, eval_every=3)
    res = subprocess.run(spectra_cmd("train", str(cfg), "--overwrite"), env=cli_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert (run / "metrics.jsonl").read_text() != old_metrics
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000003"]
    assert (run / "exports" / "adapter" / "adapter_model.safetensors").is_file()


def test_leftovers_of_killed_writers_are_removed_on_the_next_start(ctx, tmp_path):  # noqa: F811
    run = ctx.copy_run(tmp_path)
    pid = dead_pid()
    planted = [run / "checkpoints" / f".step-00000009.tmp-{pid}-ab", run / f".config.yaml.tmp-{pid}-cd",
               run / "exports" / f".adapter.tmp-{pid}-ef"]
    for path in planted:
        path.mkdir() if "step" in path.name or "adapter" in path.name else path.write_text("half")
    live = run / "checkpoints" / f".step-00000010.tmp-{os.getpid()}-gh"  # a live writer's: kept
    live.mkdir()
    res = subprocess.run(spectra_cmd("train", str(_replacing_config(ctx, tmp_path, run)), "--resume"), env=cli_env(),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not any(p.exists() for p in planted)
    assert live.is_dir()


def test_select_out_directory_gets_the_reference_file_name(ctx, tmp_path, run_cli):  # noqa: F811
    res = run_cli("select", ctx.scan / "scores.json", "--top-percent", "25", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    printed = run_cli("select", ctx.scan / "scores.json", "--top-percent", "25")
    assert (tmp_path / "unfrozen_parameters_25percent.yaml").read_text() == printed.stdout
    assert "unfrozen_parameters:" in printed.stdout


SCORER = '''
from spectra_core import ModuleScore, Scorer, Scores, StrategyOptions, hookimpl


class ConstScorer(Scorer):
    """Every module scores VALUE."""

    name = "const"

    class Options(StrategyOptions):
        pass

    def score(self, weights):
        return Scores(scorer=self.name, options={}, modules=[
            ModuleScore(name=n, type=n.split(".")[-1], score=VALUE, shape=tuple(w.shape)) for n, w in weights])


@hookimpl
def spectra_scorers():
    return [ConstScorer]
'''


def test_scan_cache_key_follows_the_scorer_code(ctx, tmp_path):  # noqa: F811
    plugin = tmp_path / "plugin"
    info = plugin / "spectra_const-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spectra-const\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[spectra]\nconst = spectra_const\n")
    env = {**cli_env(), "PYTHONPATH": str(plugin), "SPECTRA_SCAN_CACHE": str(tmp_path / "cache")}

    def scan(value: float) -> float:
        (plugin / "spectra_const.py").write_text(SCORER.replace("VALUE", repr(value)))
        res = subprocess.run(spectra_cmd("scan", str(ctx.model), "--scorer", "const", "--out", str(tmp_path / "s"),
                                         "--quiet"), env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        scores = yaml.safe_load((tmp_path / "s" / "scores.json").read_text())
        return scores["modules"][0]["score"]

    assert scan(0.25) == 0.25
    assert scan(0.75) == 0.75  # not the cached 0.25
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert scan(0.75) == 0.75 and len(list((tmp_path / "cache").glob("*.json"))) == 2  # the same code hits


def test_plan_says_when_exclude_made_the_head_a_target(ctx, tmp_path, run_cli):  # noqa: F811
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(ctx.run_config | {"targets": {"exclude": ["down_proj"]}}))
    res = run_cli("plan", cfg)
    assert res.returncode == 0, res.stderr
    assert "replaces the default ['lm_head']" in res.stdout and "lm_head is a target" in res.stdout


def test_a_directory_published_by_another_writer_meanwhile_is_replaced(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("ours")
        out.mkdir()  # the other writer publishes first
        (out / "weights").write_text("theirs")
    assert (out / "weights").read_text() == "ours"
    assert os.listdir(tmp_path) == ["model"]


def test_without_overwrite_a_directory_published_meanwhile_is_kept(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileExistsError), atomic_dir(out, overwrite=False) as tmp:
        (tmp / "weights").write_text("ours")
        out.mkdir()
        (out / "weights").write_text("theirs")
    assert (out / "weights").read_text() == "theirs" and os.listdir(tmp_path) == ["run"]
