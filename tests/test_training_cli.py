"""`spectra plan` / `spectra train` as real subprocesses: output, SIGTERM + --resume (bitwise), 2-process DDP."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import cli_env, config_dict, spectra_cmd, tiny_model_dir, write_text  # noqa: F401

from spectra_core.training.metrics import read_metrics


def _config(tmp: Path, model_dir: Path, out: str, **training) -> Path:
    data = write_text(tmp / "d.txt", 200)
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config_dict(model_dir, data, tmp / out, **training)))
    return path


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(spectra_cmd(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout)


def test_plan_prints_table_and_writes_nothing(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run")
    res = _run("plan", str(cfg), "allocator.options.top_fraction=1.0")
    assert res.returncode == 0, res.stderr
    assert "self_attn.q_proj" in res.stdout and "2/2" in res.stdout
    assert "trainable parameters: 8,192" in res.stdout and "estimated memory (none)" in res.stdout
    assert "= a uniform LoRA of rank 4.00 on every target" in res.stdout
    assert not (tmp_path / "run").exists()
    res = _run("plan", str(cfg), "--out", str(tmp_path / "plan.json"))
    assert res.returncode == 0 and (tmp_path / "plan.json").is_file()


def test_plan_shows_tiers_with_their_ranks(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run")
    tiers = ('[{"name": "high", "quantile": [0, 0.5], "rank": 8, "alpha": 16}, '
             '{"name": "low", "quantile": [0.5, 1], "rank": 0}]')
    res = _run("plan", str(cfg), "allocator={name: alors-tiers}", f"allocator.options.tiers={tiers}")
    assert res.returncode == 0, res.stderr
    assert "high 1×r8 low 1 frozen" in res.stdout
    assert "= a uniform LoRA of rank 4.00 on every target" in res.stdout  # half the modules at rank 8


def test_plan_says_which_scorer_the_rebalancer_rescores_with(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run")
    res = _run("plan", str(cfg), "scorer={name: mp}", "allocator.options.mode=all-inactive",
               "rebalancer={name: snr-reselect}")
    assert res.returncode == 0, res.stderr
    assert "rebalancer snr-reselect re-scores the effective weights with scorer mp (the run's scorer)" in res.stdout


def test_train_reports_loss_and_refuses_existing_run(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run", max_steps=3)
    res = _run("train", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "held-out loss:" in res.stdout and "(step 0) ->" in res.stdout
    assert f"adapter (PEFT): {tmp_path / 'run' / 'final'}" in res.stdout
    res = _run("train", str(cfg))
    assert res.returncode == 2 and "already holds a run" in res.stderr
    res = _run("train", str(cfg), "training.max_steps=4", "--resume")
    assert res.returncode == 2 and "training.max_steps: 3 (run) -> 4 (now)" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_the_uninterrupted_adapter(tiny_model_dir, tmp_path, sig):
    """SIGTERM writes a checkpoint and exits 143; SIGKILL leaves the last periodic one. Either way
    `--resume` ends with a final adapter bitwise equal to an uninterrupted run's."""
    kw = {"max_steps": 150, "save_every": 10, "eval_every": 1000, "log_every": 50}
    cfg_a, cfg_b = _config(tmp_path, tiny_model_dir, "a", **kw), _config(tmp_path, tiny_model_dir, "b", **kw)
    baseline = subprocess.Popen(spectra_cmd("train", str(cfg_a)), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(spectra_cmd("train", str(cfg_b)), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "b" / "checkpoints" / "step-00000010"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert "interrupted by signal 15" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "final").exists()
    ckpts = sorted(p for p in (tmp_path / "b" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert ckpts  # a kill mid-write leaves at most a hidden temp dir, never a half-written checkpoint
    stopped = int(ckpts[-1].name.split("-")[1])
    assert 10 <= stopped < 150
    res = _run("train", str(cfg_b), "--resume")
    assert res.returncode == 0, res.stderr
    assert baseline.wait(timeout=300) == 0
    a = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run", max_steps=3, save_every=3)
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "spectra_core", "train", str(cfg)]
    torchrun = Path(spectra_cmd()[0]).parent / "torchrun"
    res = subprocess.run([str(torchrun), *cmd[1:]], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("held-out loss:") == 1  # only rank 0 reports
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # one writer
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000003"]


@pytest.mark.slow
def test_accelerate_launch_two_processes(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run", max_steps=2, save_every=2)
    launcher = Path(spectra_cmd()[0]).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "spectra_core", "train", str(cfg)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("held-out loss:") == 1


def test_plan_calibrate_shows_groups_and_saving(tiny_model_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, "run")
    base = ["allocator.options.top_fraction=1.0", "gradient_merger.name=cosine-groups",
            "gradient_merger.options.threshold=-1.0", "gradient_merger.options.calibration_batches=2"]
    res = _run("plan", str(cfg), *base, "--calibrate")
    assert res.returncode == 0, res.stderr
    assert "group g0:" in res.stdout and "shared LoRAs: 8,192 ->" in res.stdout
    assert not (tmp_path / "run").exists()
    res = _run("plan", str(cfg), "--calibrate")
    assert res.returncode == 2 and "spectra plan --calibrate) needs a gradient_merger" in res.stderr
