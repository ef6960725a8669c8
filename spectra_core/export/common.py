"""Helpers shared by the exporters: where the trained adapter comes from, checking it against the plan."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spectra_core.adapters import peft_targets
from spectra_core.errors import InputError
from spectra_core.expert_plan import by_tensor
from spectra_core.plan import AdapterPlan
from spectra_core.strategies import RunArtifacts

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_LORA_A = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_A(?:\.[^.]+)?\.weight$")


def live_model(run: RunArtifacts) -> Any:
    """The peft model held in memory when the run was just trained, else None (read ``final/``)."""
    return getattr(run, "model", None)


def write_adapter(run: RunArtifacts, directory: Path) -> None:
    """Write the run's adapter as a stock PEFT directory: from the live model, else copied from ``final/``."""
    model = live_model(run)
    if model is not None:
        model.save_pretrained(directory)
        return
    final = Path(run.run_dir) / "final"
    missing = [f for f in ADAPTER_FILES if not (final / f).is_file()]
    if missing:
        raise InputError(f"{final} is not a PEFT adapter directory (missing {', '.join(missing)})",
                         hint="re-run training, or resume it so that final/ is written")
    check_adapter(final, run.plan)  # name final/, not the temp directory it is copied to
    for name in ADAPTER_FILES:
        shutil.copy2(final / name, directory / name)


@contextlib.contextmanager
def adapter_dir(run: RunArtifacts) -> Iterator[Path]:
    """A stock PEFT adapter directory for the run: ``final/`` itself, or a temp save of the live model."""
    if live_model(run) is None:
        final = Path(run.run_dir) / "final"
        check_adapter(final, run.plan)
        yield final
        return
    with tempfile.TemporaryDirectory(prefix=".spectra-adapter-") as tmp:
        write_adapter(run, Path(tmp))
        check_adapter(Path(tmp), run.plan)
        yield Path(tmp)


def adapter_ranks(directory: Path) -> dict[str, int]:
    """Module name → LoRA rank, read from the shapes in ``adapter_model.safetensors`` (no tensor loaded)."""
    from safetensors import safe_open

    ranks: dict[str, int] = {}
    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            match = _LORA_A.match(key)
            if match:
                ranks[match["module"]] = fh.get_slice(key).get_shape()[0]
    return ranks


def parameter_ranks(ranks: dict[str, int], plan: AdapterPlan) -> dict[str, int]:
    """``ranks`` with peft's keys of fused expert tensors renamed to the plan's parameter names.

    peft stores the LoRA of parameter ``owner.p`` under the wrapper's module path: the parameters of one
    module are wrapped in model order, each around the last, so the last is ``owner`` itself and each
    earlier one sits one ``.base_layer`` deeper. Its lora_A has ``rank × experts`` rows."""
    out = dict(ranks)
    counts = {tensor: len(entries) for tensor, entries in by_tensor(plan).items()}
    owners: dict[str, list[str]] = {}
    for t in peft_targets(plan):
        if t.kind == "parameter":
            owners.setdefault(t.name.rpartition(".")[0], []).append(t.name)
    for owner, tensors in owners.items():
        for depth, tensor in enumerate(reversed(tensors)):
            key = owner + ".base_layer" * depth
            if key in out:
                out[tensor] = out.pop(key) // counts[tensor]
    return out


def check_adapter(directory: Path, plan: AdapterPlan) -> None:
    """Refuse an adapter whose modules or ranks differ from the plan (a stale ``final/``, a wrong plan)."""
    ranks = parameter_ranks(adapter_ranks(directory), plan)
    wanted = {t.name: t.rank for t in peft_targets(plan)}
    problems = [f"{name}: rank {wanted.get(name, 0)} in the plan, {ranks.get(name, 0)} in the adapter"
                for name in sorted(set(ranks) | set(wanted)) if ranks.get(name) != wanted.get(name)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise InputError(f"the adapter in {directory} does not match plan.json: {shown}",
                         hint="export from the run directory whose final/ was written with this plan")


def adapter_parameters(directory: Path) -> int:
    """Parameters stored in ``adapter_model.safetensors`` (a group's shared LoRA counts once per member)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            n = 1
            for dim in fh.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


def base_model_name(run: RunArtifacts) -> str:
    """The base model as the config names it (a hub id, a local path, or ``bundled:...``)."""
    return str(run.config.model.source)


def groups_json(plan: AdapterPlan) -> str:
    """``spectra_groups.json``: group id → member module names."""
    return json.dumps({"schema_version": 1, "groups": plan.groups()}, indent=2) + "\n"
