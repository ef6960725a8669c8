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
from .registry import HOOK_OF_STAGE, Registry, get_registry
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
    format: Literal["text", "instruction", "chat", "seq2seq"] = Field(
        default="text", description="text, instruction, chat: causal LMs; seq2seq: encoder-decoder models (T5, BART).")
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    input_field: str = Field(default="input", description="seq2seq: the column the encoder reads.")
    target_field: str = Field(default="target", description="seq2seq: the column the decoder learns to produce.")
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
    exclude: list[str] = Field(default_factory=lambda: ["lm_head"], description=(
        "Regexes of modules never adapted. A list given here replaces the default ['lm_head']: keep "
        "'lm_head' in it to keep the output head frozen (`spectra plan` notes when the head became a target)."))


def _empty_stage(stage: Stage, registry: Registry) -> type[BaseModel]:
    def refuse(cls: type, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        if found := _not_loaded(HOOK_OF_STAGE[stage], name, registry):
            raise ValueError(f"unknown {stage} {name!r}; {found[0]} ({found[1]})")
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
        return _empty_stage(stage, registry)
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


def _not_loaded(hook: str, name: Any, registry: Registry) -> tuple[str, str] | None:
    from .plugin_hints import not_loaded_provider

    return not_loaded_provider(hook, name, set(registry.plugins)) if isinstance(name, str) else None


def apply_method(data: dict[str, Any], registry: Registry, source: str = "config",
                 node: yaml.Node | None = None) -> dict[str, Any]:
    """Fill the method's defaults under the explicit sections; an unknown method is refused alone
    (the sections it would have filled are not reported as missing)."""
    name = data.get("method")
    if name is None:
        return data
    if not isinstance(name, str) or name not in registry.methods:
        line = _line_of(node, ["method"])
        at = f" (line {line})" if line else ""
        available = ", ".join(sorted(registry.methods)) or "none installed"
        found = _not_loaded("spectra_methods", name, registry)
        if found:
            raise ConfigError(f"{source}: method{at}: {found[0]}", hint=found[1])
        raise ConfigError(f"{source}: method{at}: unknown method {name!r}; available: {available}",
                          hint="pick one of the available methods (`spectra methods` lists them), or "
                               "pip install the plugin that provides it")
    return _merge_section(registry.methods[name].defaults, data)


def _override_value(item: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({problem})",
                          hint="quote a value meant as text, or complete it (e.g. training.max_steps=100, "
                               "targets.include=[q_proj, v_proj])") from None


def _child(node: Any, part: str, item: str, where: str, create: bool) -> Any:
    """``node[part]`` for an override's path (a dict key or a list index); ``where`` names ``node``."""
    if isinstance(node, list):
        if not part.isdigit():
            raise ConfigError(f"override {item!r}: {where} is a list; {part!r} is not an index",
                              hint=f"use an index 0..{len(node) - 1}, e.g. {where}.0")
        if int(part) >= len(node):
            raise ConfigError(f"override {item!r}: {where} has {len(node)} entr{'y' if len(node) == 1 else 'ies'}, "
                              f"so there is no index {part}",
                              hint=f"use an index 0..{len(node) - 1}, or set the whole list: {where}=[...]"
                              if node else f"set the whole list: {where}=[...]")
        return node[int(part)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {item!r}: {where} is a value ({node!r}), not a section",
                          hint=f"override {where} itself (e.g. {where}=...)")
    if part.isdigit() and part not in node:
        raise ConfigError(f"override {item!r}: {where} is not a list in this config, so there is no index {part}",
                          hint=f"set the whole list: {where}=[...]")
    return node.setdefault(part, {}) if create else node


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; numeric parts index lists)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value",
                              hint="e.g. training.max_steps=100 or allocator.options.top_fraction=0.5")
        value = _override_value(item, raw)
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[:i]) or "the config"
            node = _child(node, part, item, where, create=True)
        last, where = parts[-1], ".".join(parts[:-1]) or "the config"
        if isinstance(node, list):
            _child(node, last, item, where, create=False)
            node[int(last)] = value
        else:
            _child(node, last, item, where, create=False)
            node[last] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would let the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice")
        self.key, self.first, self.second = key, first, second


def read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ConfigError(f"config path {path} is a directory", hint="pass the path of a YAML run config file")
        raise ConfigError(f"config file not found: {path}", hint="pass the path of a YAML run config")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start})",
                          hint="save the config as UTF-8 (is it the right file?)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        node = yaml.compose(text)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: key {exc.key!r} is given twice (lines {exc.first} and {exc.second})",
                          hint=f"keep one of the two; YAML would silently use line {exc.second}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", hint="fix the YAML syntax at the position shown") from None
    if data is None:
        raise ConfigError(f"{path} is empty (no settings, only blank lines or comments)",
                          hint="a run config needs at least model, quantizer, scorer and allocator (or method); "
                               "start from configs/demo.yaml, or see `spectra config schema`")
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
            found = _not_loaded(HOOK_OF_STAGE[STAGE_KEYS[stage]], given, registry)
            msg = f"unknown {STAGE_KEYS[stage]} {given!r}; " + (f"{found[0]} ({found[1]})" if found else f"available: {names}")
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
    node = None
    if path is not None:
        data, node = read_yaml(Path(path))
        base_dir = Path(path).resolve().parent
    else:
        base_dir = Path.cwd()
    data = apply_overrides(data or {}, list(overrides))
    registry = registry or get_registry()  # after the file's own errors: loading the plugins imports torch
    full = apply_method(data, registry, str(path or "config"), node)
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
