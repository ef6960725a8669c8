"""The core's built-in plugin: shared building-block strategies (quantizers, scorers, exporters).

Registered through the entry point ``core = spectra_core.builtins`` in the ``spectra`` group,
exactly like any third-party plugin.
"""

from __future__ import annotations

from spectra_core.hookspecs import hookimpl

from .exporters import EXPORTERS
from .quantizers import QUANTIZERS
from .scorers import SCORERS


@hookimpl
def spectra_quantizers():
    return list(QUANTIZERS)


@hookimpl
def spectra_scorers():
    return list(SCORERS)


@hookimpl
def spectra_exporters():
    return list(EXPORTERS)
