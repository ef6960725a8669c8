"""Run configuration: YAML → one validated pydantic model.

Each strategy section is ``{name: ..., options: {...}}``; the options are validated by that strategy's
own ``Options`` model (a discriminated union over every installed strategy of the stage, so the JSON
schema includes plugin options). ``method:`` fills defaults that explicit sections override.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .errors import ConfigError
from .registry import Registry, get_registry
from .strategies import STAGES, Stage

STAGE_KEYS: dict[str, Stage] = {**{s: s for s in STAGES}, "exporters": "exporter"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BUNDLED_PREFIX = "bundled:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    source: str = Field(description="A local HF model directory, 'bundled:smollm2-135m', or a hub id.")
    revision: str | None = None
    trust_remote_code: bool = Field(default=False, description="Run model code from the checkpoint. Off unless asked.")

    @field_validator("source")
    @classmethod
    def _exists(cls, v: str) -> str:
        if v.startswith(BUNDLED_PREFIX) or Path(v).expanduser().exists():
            return v
        if HUB_ID.match(v) and not v.startswith((".", "/", "~")):
            return v  # resolved (or refused offline) when the model is loaded
        raise ValueError(f"model path {v!r} does not exist; give a local HF model directory, "
                         "'bundled:smollm2-135m', or a hub id like 'HuggingFaceTB/SmolLM2-135M'")


class DataConfig(_Strict):
    path: str = Field(description="Local file (txt/jsonl/json/csv/parquet) or a hub dataset id.")
    format: Literal["text", "instruction", "chat"] = "text"
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    max_length: int = Field(default=256, gt=0)
    packing: bool = Field(default=True, description="Concatenate text documents and cut into max_length blocks.")
    validation_fraction: float = Field(default=0.05, gt=0, le=0.5)
    validation_path: str | None = None
    max_samples: int | None = Field(default=None, gt=0)


class TrainingConfig(_Strict):
    max_steps: int = Field(default=200, gt=0)
    batch_size: int = Field(default=4, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    eval_every: int = Field(default=50, gt=0)
    eval_batches: int | None = Field(default=None, gt=0, description="Limit evaluation to N batches.")
    save_every: int = Field(default=50, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    log_every: int = Field(default=10, gt=0)
    seed: int = 0
    report_to: list[str] | None = Field(
        default=None, description="Trackers for accelerate's Accelerator(log_with=...): tensorboard, wandb, mlflow, "
        "comet_ml, aim, clearml, dvclive, ... ([] for none). Default: tensorboard when it is installed. W&B without "
        "WANDB_API_KEY logs offline into the run directory.")


class TargetsConfig(_Strict):
    include: list[str] | None = Field(
        default=None, description="Regexes over module names; default: every nn.Linear except the output head.")
    exclude: list[str] = Field(default_factory=lambda: ["lm_head"])


def _empty_stage(stage: Stage) -> type[BaseModel]:
    def refuse(cls: type, data: Any) -> Any:
        raise ValueError(f"no {stage} strategies are installed; pip install a plugin that provides one")

    return create_model(f"No_{stage}", __config__=ConfigDict(extra="allow"),
                        __validators__={"refuse": model_validator(mode="before")(refuse)})


def _section_type(registry: Registry, stage: Stage) -> Any:
    members = []
    for name, cls in sorted(registry.strategies[stage].items()):
        title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", f"{stage}_{name}"))
        members.append(create_model(
            title, __config__=ConfigDict(extra="forbid", title=f"{stage}: {name}"),
            __doc__=cls.summary(),
            name=(Literal[name], ...),
            options=(cls.Options, Field(default_factory=cls.Options)),
        ))
    if not members:
        return _empty_stage(stage)
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="name")]


def config_model(registry: Registry | None = None) -> type[BaseModel]:
    """The pydantic model of a whole run config for the installed strategies."""
    registry = registry or get_registry()
    sec = {stage: _section_type(registry, stage) for stage in STAGES}
    methods = tuple(sorted(registry.methods)) or ("none",)
    return create_model(
        "RunConfig",
        __config__=ConfigDict(extra="forbid", title="SpectraQLoRA run config"),
        method=(Literal[methods] | None, Field(default=None, description="Fills defaults for every section.")),
        model=(ModelConfig, ...),
        quantizer=(sec["quantizer"], ...),
        scorer=(sec["scorer"], ...),
        allocator=(sec["allocator"], ...),
        gradient_merger=(sec["gradient_merger"] | None, None),
        rebalancer=(sec["rebalancer"] | None, None),
        exporters=(list[sec["exporter"]], Field(default_factory=list)),
        targets=(TargetsConfig, Field(default_factory=TargetsConfig)),
        data=(DataConfig | None, None),
        training=(TrainingConfig, Field(default_factory=TrainingConfig)),
        output_dir=(str, Field(default="runs/spectra", description="Where the run writes everything.")),
    )


# ----- loading ----------------------------------------------------------------------------------------
def _merge_section(default: Any, explicit: Any) -> Any:
    if isinstance(default, dict) and isinstance(explicit, dict):
        if "name" in default and "name" in explicit and default["name"] != explicit["name"]:
            return explicit  # a different strategy: the method's options do not apply
        out = copy.deepcopy(default)
        for k, v in explicit.items():
            out[k] = _merge_section(out.get(k), v) if k in out else v
        return out
    return explicit if explicit is not None else default


def apply_method(data: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Fill the method's defaults under the explicit sections."""
    name = data.get("method")
    if not name or not isinstance(name, str):
        return data
    if name not in registry.methods:
        return data  # validation reports the unknown method with the list of available ones
    return _merge_section(registry.methods[name].defaults, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; numeric parts index lists)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value",
                              hint="e.g. training.max_steps=100 or allocator.options.top_fraction=0.5")
        value = yaml.safe_load(raw) if raw else None
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        if isinstance(node, list) and parts[-1].isdigit():
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return data


def read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="pass the path of a YAML run config")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", hint="fix the YAML syntax at the position shown") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}",
                          hint="see `spectra config schema` for the expected keys")
    return data, node


def _line_of(node: yaml.Node | None, path: list[str | int]) -> int | None:
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _real_path(data: Any, loc: tuple[Any, ...]) -> list[str | int]:
    """Drop the discriminator tags pydantic inserts into error locations."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            out.append(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
            out.append(part)
        elif isinstance(data, dict) and isinstance(part, str) and "." not in part and part not in data and not out:
            out.append(part)  # a missing top-level key
    return out or list(loc)


def format_validation_error(exc: ValidationError, data: dict[str, Any], node: yaml.Node | None, source: str,
                            registry: Registry) -> str:
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        path = _real_path(data, err["loc"])
        if err["type"] == "missing":
            path = [p for p in err["loc"] if not isinstance(p, str) or "-" not in p or p in data]
        where = ".".join(str(p) for p in path) or "<top level>"
        line = _line_of(node, path)
        at = f" (line {line})" if line else ""
        msg = err["msg"]
        stage = next((p for p in path if isinstance(p, str) and p in STAGE_KEYS), None)
        if stage and err["type"] in ("union_tag_invalid", "literal_error") and (
                err["type"] == "union_tag_invalid" or path[-1] == "name"):
            given = err["input"].get("name") if isinstance(err["input"], dict) else err["input"]
            names = ", ".join(sorted(registry.strategies[STAGE_KEYS[stage]]))
            msg = f"unknown {STAGE_KEYS[stage]} {given!r}; available: {names}"
            path = [p for p in path if p != "name"]
            where, line = ".".join(str(p) for p in path), _line_of(node, path)
            at = f" (line {line})" if line else ""
        elif err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (`spectra config schema` lists valid keys)"
        lines.append(f"  {where}{at}: {msg}")
    return "\n".join(lines)


def load_config(path: Path | None = None, *, data: dict[str, Any] | None = None, overrides: list[str] = (),
                registry: Registry | None = None) -> BaseModel:
    """Read, fill method defaults, apply overrides, validate. Raises ConfigError listing every problem."""
    registry = registry or get_registry()
    node = None
    if path is not None:
        data, node = read_yaml(Path(path))
        base_dir = Path(path).resolve().parent
    else:
        base_dir = Path.cwd()
    data = apply_overrides(data or {}, list(overrides))
    full = apply_method(data, registry)
    _resolve_relative_paths(full, base_dir)
    try:
        return config_model(registry).model_validate(full)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, full, node, str(path or "config"), registry),
                          hint="see `spectra config schema` for every key and its type") from None


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Model and data paths in a config file may be relative to the file (output_dir is relative to the cwd)."""
    for section, key in (("model", "source"), ("data", "path"), ("data", "validation_path")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            v = sec[key]
            if not Path(v).is_absolute() and not v.startswith(BUNDLED_PREFIX) and (base / v).exists():
                sec[key] = str((base / v).resolve())


def config_schema(registry: Registry | None = None) -> str:
    return json.dumps(config_model(registry).model_json_schema(), indent=2)
