"""The ``spectra`` Typer app; each command module registers its commands on it (``from .app import app``)."""

from __future__ import annotations

import typer

app = typer.Typer(help="SpectraQLoRA: spend LoRA capacity where the weights carry signal.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
