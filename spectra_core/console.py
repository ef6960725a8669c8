"""Known-harmless import-time messages of the libraries we integrate, dropped by logging/warning filters.

Each entry is one logger and the start of one message it emits that a user cannot act on and reads as a
failure. Only those records are dropped: every other record of the same logger, and stderr itself, stay.
"""

from __future__ import annotations

import logging
import warnings

KNOWN_HARMLESS = {
    # bitsandbytes/backends/cpu/ops.py, on CPUs with AVX512-BF16: an optional hub kernel (`kernels` package),
    # which we do not install; bitsandbytes falls back to its own CPU kernel.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # torchao/__init__.py: its optional CUDA/C++ extensions (_C_mxfp8, _C_cutlass_90a ...) on a CPU-only torch.
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    # torch/utils/_pytree.py: a deprecation notice about torchao's Enum registrations.
    "torch.utils._pytree": ("<enum ",),
}
# peft 0.21 still asks transformers 5 for the renamed `is_gradient_checkpointing`
KNOWN_HARMLESS_WARNINGS = ("`is_gradient_checkpointing` is deprecated",)


class DropKnownHarmless(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for name, prefixes in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownHarmless) for f in logger.filters):
            logger.addFilter(DropKnownHarmless(prefixes))
    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
