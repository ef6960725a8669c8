"""Resumable checkpoints in safetensors + JSON only (never pickle), each written atomically.

    checkpoints/step-00000050/
      adapter.safetensors     every LoRA parameter (trainable or not), by parameter name
      optimizer.safetensors   optimizer state tensors, keyed ``{param name}/{state key}``
      rng.safetensors         torch CPU (and CUDA) generator states
      state.json              step, data position, LR schedule, param groups, numpy/python RNG,
                              the plan at this step
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir
from ..errors import InputError
from ..plan import AdapterPlan
from ..rundir import list_checkpoints

FORMAT = 1


@dataclass
class TrainState:
    """Scalars that, with model and optimizer, fully determine how training continues."""

    step: int  # optimizer steps done
    micro_batches: int  # global micro-batches consumed from the data stream
    tokens: int = 0


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if "lora_" in n}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    return tensors, {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = data["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = data["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups = []
    for g in optimizer.param_groups:
        groups.append({k: v for k, v in g.items() if k != "params"})
        for name, p in zip(g["names"], g["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{key}"] = value.detach().contiguous().clone()
                else:
                    scalars.setdefault(name, {})[key] = value
    return tensors, groups, scalars


def save_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    plan: AdapterPlan, *, schedule: dict[str, Any], keep: int) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically, then keep only the newest ``keep`` checkpoints."""
    target = step_dir(root, state.step)
    opt_tensors, groups, scalars = _optimizer_state(optimizer)
    rng_tensors, rng_json = _rng_state()
    meta = {"format": FORMAT, "step": state.step, "micro_batches": state.micro_batches, "tokens": state.tokens,
            "schedule": schedule, "param_groups": groups, "optimizer_scalars": scalars, "rng": rng_json,
            "plan": json.loads(plan.model_dump_json())}
    with atomic_dir(target) as tmp:
        save_file(_lora_state(model), tmp / "adapter.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(rng_tensors, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_plan(path: Path) -> AdapterPlan:
    """The plan stored in a checkpoint."""
    return AdapterPlan.model_validate(_meta(path)["plan"])


def _meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"checkpoint {path} is unreadable: {exc}", hint="delete it to resume from an older one") from exc


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore LoRA weights, optimizer state and hyper-parameters, and RNG states; return the counters."""
    path = Path(path)
    meta = _meta(path)
    params = dict(model.named_parameters())
    adapter = load_file(path / "adapter.safetensors")
    missing = [n for n in adapter if n not in params]
    if missing:
        raise InputError(f"checkpoint {path} has parameters the model lacks: {missing[:3]}",
                         hint="the plan or model changed; start a new run with --overwrite")
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value)
    opt_tensors = load_file(path / "optimizer.safetensors")
    by_name = {n: p for g in optimizer.param_groups for n, p in zip(g["names"], g["params"])}
    saved = {tuple(g["names"]): g for g in meta["param_groups"]}
    for g in optimizer.param_groups:
        g.update({k: v for k, v in saved.get(tuple(g["names"]), {}).items() if k != "names"})
    optimizer.state.clear()
    for key, value in opt_tensors.items():
        name, _, field = key.rpartition("/")
        if name in by_name:
            param = by_name[name]  # moments live with their parameter (the GPU); torch keeps "step" on the CPU
            optimizer.state[param][field] = value if field == "step" else value.to(param.device)
    for name, values in meta["optimizer_scalars"].items():
        if name in by_name:
            optimizer.state[by_name[name]].update(values)
    _set_rng_state(load_file(path / "rng.safetensors"), meta["rng"])
    return TrainState(step=meta["step"], micro_batches=meta["micro_batches"], tokens=meta.get("tokens", 0))
