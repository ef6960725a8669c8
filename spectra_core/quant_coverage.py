"""Weights a quantizer must not miss, where transformers' own integration does: ``nn.Linear`` subclasses
(Falcon's ``FalconLinear``), which its bitsandbytes integration leaves in float; fused 3-D MoE expert
tensors (not linear layers at all), quantized with bitsandbytes' parameter parametrization; and GPT-2's
``Conv1D`` (an ``in × out`` linear), which torchao's NF4 tensor cannot multiply. A subclass is quantized
only when its forward is checked to be ``F.linear`` on a probe input; one that computes something else
is refused, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spectra_core.errors import InputError

if TYPE_CHECKING:
    import torch


def _is_quantized(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return hasattr(weight, "quant_state") or hasattr(weight, "get_original_weight")


def linear_subclasses(model: torch.nn.Module, skip: Any = ()) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the float ``nn.Linear`` subclasses of ``model`` (the output head and names
    containing one of ``skip`` left out)."""
    import torch

    head = model.get_output_embeddings()
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear and m is not head
            and not _is_quantized(m) and not any(s in name for s in skip)]


def computes_linear(module: torch.nn.Module) -> bool:
    """True when ``module(x)`` equals ``F.linear(x, weight, bias)`` on a random probe input."""
    import torch

    weight, bias = module.weight, module.bias
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, module.in_features, generator=generator).to(weight.device, weight.dtype)
    with torch.no_grad():
        try:
            got = module(x)
        except Exception:  # a forward that needs other arguments is not a plain linear
            return False
        want = torch.nn.functional.linear(x, weight, bias)
    tolerance = 1e-5 if weight.dtype == torch.float32 else 2e-2
    return got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), rtol=tolerance, atol=tolerance))


def plain_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """A plain ``nn.Linear`` with ``module``'s weight (a Conv1D's transposed to ``out × in``) and bias."""
    import torch
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.detach()
    if isinstance(module, Conv1D):
        weight = weight.T
    out_f, in_f = weight.shape
    with torch.device("meta"):
        linear = torch.nn.Linear(in_f, out_f, bias=module.bias is not None)
    linear.weight = torch.nn.Parameter(weight.contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = torch.nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


def checked_subclasses(model: torch.nn.Module, quantizer: str, skip: Any = ()) -> list[tuple[str, torch.nn.Module]]:
    """The float ``nn.Linear`` subclasses that compute ``F.linear``; any other subclass is an InputError."""
    found = linear_subclasses(model, skip)
    other = [f"{name} ({type(m).__name__})" for name, m in found if not computes_linear(m)]
    if other:
        raise InputError(f"{quantizer} cannot quantize {len(other)} linear layers whose forward is not a plain "
                         f"linear map: {', '.join(other[:4])}{' ...' if len(other) > 4 else ''}; training would "
                         "run on a partly unquantized base",
                         hint="use quantizer: none (a float base), or exclude these layers from quantization with "
                              "the quantizer's skip option where it has one")
    return found


def quantize_bnb_subclasses(model: torch.nn.Module, config: Any) -> int:
    """Replace every float ``nn.Linear`` subclass computing ``F.linear`` by a bitsandbytes ``Linear4bit``
    with ``config``'s settings (transformers converts only exact ``nn.Linear`` and Conv1D); returns how many."""
    import bitsandbytes as bnb

    found = checked_subclasses(model, "bnb-nf4")
    for name, module in found:
        weight = module.weight
        linear = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                   compute_dtype=config.bnb_4bit_compute_dtype,
                                   compress_statistics=config.bnb_4bit_use_double_quant,
                                   quant_type=config.bnb_4bit_quant_type, device="meta")
        linear.weight = bnb.nn.Params4bit(weight.detach().to("cpu", config.bnb_4bit_compute_dtype).contiguous(),
                                          requires_grad=False, quant_type=config.bnb_4bit_quant_type,
                                          compress_statistics=config.bnb_4bit_use_double_quant)
        if module.bias is not None:
            linear.bias = module.bias
        model.set_submodule(name, linear.to(weight.device))
    return len(found)


def plain_linears(model: torch.nn.Module, skip: Any = ()) -> int:
    """Make every float linear subclass computing ``F.linear`` and every ``Conv1D`` a plain ``nn.Linear``
    with the same weights (what torchao's NF4 weights work in); returns how many."""
    from transformers.pytorch_utils import Conv1D

    found = checked_subclasses(model, "torchao-nf4", skip)
    found += [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D) and not any(s in n for s in skip)]
    for name, module in found:
        model.set_submodule(name, plain_linear(module))
    return len(found)


def restore_conv1d(model: torch.nn.Module, reference: torch.nn.Module) -> int:
    """Give back a dequantized model the ``Conv1D`` layers of ``reference`` (its meta model), weights
    transposed to ``in × out``, so ``save_pretrained`` writes the layout transformers loads; returns how many."""
    import torch
    from transformers.pytorch_utils import Conv1D

    conv = {name for name, m in reference.named_modules() if isinstance(m, Conv1D)}
    count = 0
    for name, module in list(model.named_modules()):
        if name in conv and type(module) is torch.nn.Linear:
            layer = Conv1D(module.out_features, module.in_features)
            layer.weight = torch.nn.Parameter(module.weight.detach().T.contiguous())
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(module.bias.detach())
            model.set_submodule(name, layer)
            count += 1
    return count


def fused_experts(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(module, parameter name) of every float 3-D parameter (fused MoE experts) of ``model``."""
    return [(m, name) for m in model.modules() for name, p in m.named_parameters(recurse=False)
            if p.ndim == 3 and p.is_floating_point() and not hasattr(m, "parametrizations")]


def bnb_4bit_config(model: torch.nn.Module) -> Any:
    """The bitsandbytes 4-bit config ``model`` was loaded with (``hf_quantizer``), or None."""
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    return config if getattr(config, "load_in_4bit", False) else None


def quantize_bnb_experts(model: torch.nn.Module, config: Any = None) -> int:
    """Quantize every float fused 3-D expert tensor of a bitsandbytes 4-bit model in place, with its
    settings (``config``, default the model's own): a parametrization that dequantizes on access, which
    peft's ``target_parameters`` LoRA works on top of. Call it after peft wrapped the experts: peft nests
    the wrappers of one module in another order when it is already parametrized, and the adapter would
    then not load on a float base. Returns how many tensors it quantized (0 on other models)."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    config = config or bnb_4bit_config(model)
    if config is None:
        return 0
    found = fused_experts(model)
    for module, name in found:
        replace_parameter_4bit(module, name, compress_statistics=config.bnb_4bit_use_double_quant,
                               quant_type=config.bnb_4bit_quant_type)
    return len(found)


def dequantize_experts(model: torch.nn.Module) -> int:
    """Undo :func:`quantize_bnb_experts`: each expert tensor becomes its dequantized float values."""
    from torch.nn.utils import parametrize

    import torch

    count = 0
    for module in list(model.modules()):
        for name in list(getattr(module, "parametrizations", {}) or {}):
            value = getattr(module, name).detach().clone()  # dequantized (the uint8 codes cannot hold it)
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
            count += 1
    return count
