"""Trackers through accelerate (training.report_to): TensorBoard event files and an offline W&B run hold
the losses of metrics.jsonl; an unknown or missing tracker is refused before anything is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_fixtures import config_dict, make_tiny_model, write_text

from spectra_core.errors import ConfigError
from spectra_core.pipeline import Pipeline


def tiny_config(root: Path, **training) -> dict:
    cfg = config_dict(make_tiny_model(root / "model"), write_text(root / "train.txt", n=60), root / "run",
                      max_steps=3, **training)
    cfg["exporters"] = []
    return cfg


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_tensorboard_and_offline_wandb_receive_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # recorded, so the offline mode set by spectra is undone afterwards
    monkeypatch.delenv("WANDB_MODE")
    run = Pipeline.from_dict(tiny_config(tmp_path, report_to=["tensorboard", "wandb"])).train()
    assert os.environ["WANDB_MODE"] == "offline"
    losses = train_losses(run.run_dir)

    events = EventAccumulator(str(run.run_dir / "tensorboard" / "spectra"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx(losses) and set(logged) == {1, 2, 3}
    assert "eval_loss" in events.Tags()["scalars"]

    offline = list((run.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    history = offline[0].read_bytes()  # wandb's record log: each history value is stored as its JSON text
    assert all(json.dumps(v).encode() in history for v in losses.values())


def test_unknown_or_missing_tracker_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'"):
        Pipeline.from_dict(tiny_config(tmp_path, report_to=["tensorbored"])).train()
    assert not (tmp_path / "run").exists()


def test_no_trackers_writes_only_metrics_jsonl(tmp_path):
    run = Pipeline.from_dict(tiny_config(tmp_path, report_to=[])).train()
    assert not (run.run_dir / "tensorboard").exists() and not (run.run_dir / "wandb").exists()
    assert set(train_losses(run.run_dir)) == {1, 2, 3}
