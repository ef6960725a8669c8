"""The ``spectra`` command line. Each command group lives in its own module of this package."""

from __future__ import annotations

import sys

import typer

from spectra_core.console import quiet_known_noise
from spectra_core.errors import SpectraError

from .app import app


def _register() -> None:
    from . import compare, config_cmd, info  # noqa: F401  (commands register themselves on `app`)
    from . import eval_cmd, generate  # noqa: F401
    from . import export  # noqa: F401
    from . import scan  # noqa: F401
    from . import train  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; user errors print a message and exit 2, without a traceback."""
    from spectra_core.spectral.phases import phase

    quiet_known_noise()
    with phase("import"):
        _register()
    try:
        app(args=argv)  # standalone: usage errors print click's message and exit 2
    except SpectraError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
