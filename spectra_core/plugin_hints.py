"""Why a method or strategy name is unknown when a plugin providing it is installed but not loaded
(``SPECTRA_DISABLE_PLUGIN_AUTOLOAD`` / ``SPECTRA_PLUGINS``). Used only on the error path."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any

from .plugins import ENTRY_POINT_GROUP


def _why_not_loaded(plugin: str) -> tuple[str, str]:
    if os.environ.get("SPECTRA_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
        return ("SPECTRA_DISABLE_PLUGIN_AUTOLOAD is set, so only the core built-ins are loaded",
                f"unset SPECTRA_DISABLE_PLUGIN_AUTOLOAD, or set SPECTRA_PLUGINS={plugin} without it")
    wanted = os.environ.get("SPECTRA_PLUGINS", "")
    return (f"SPECTRA_PLUGINS={wanted} does not name it",
            f"add it: SPECTRA_PLUGINS={','.join(filter(None, [wanted.strip(','), plugin]))}")


def not_loaded_provider(hook: str, name: str, loaded: set[str]) -> tuple[str, str] | None:
    """(message, hint) naming the installed plugin not loaded whose ``hook`` provides ``name``, else None.

    ``hook`` is a hook name (``spectra_methods``, ``spectra_scorers``, ...); ``loaded`` the loaded
    plugins' names. The unloaded plugins are imported here, each failure ignored.
    """
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in loaded:
            continue
        try:
            module: Any = importlib.import_module(ep.value.split(":")[0])
            plugin = getattr(module, ep.attr) if ep.attr else module
            provided = [item.name for item in getattr(plugin, hook)()]
        except Exception:  # a broken plugin the user chose not to load tells us nothing
            continue
        if name in provided:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
            why, hint = _why_not_loaded(ep.name)
            return f"{name!r} is provided by plugin {ep.name!r} ({dist}), which is installed but not loaded: {why}", hint
    return None
