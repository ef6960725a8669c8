"""Plugin loading: every plugin, the core's built-ins included, comes from the entry-point group ``spectra``.

Environment:
- ``SPECTRA_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the core built-ins (entry point ``core``).
- ``SPECTRA_PLUGINS=a,b`` loads the core built-ins plus only the entry points named ``a`` and ``b``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "spectra"
CORE_PLUGIN = "core"
HOOK_PREFIX = "spectra_"


@dataclass
class PluginInfo:
    """What ``spectra plugins`` shows about one loaded plugin."""

    name: str
    distribution: str
    version: str
    entry_point: str
    hooks: list[str] = field(default_factory=list)


def _selected(eps: list[EntryPoint]) -> list[EntryPoint]:
    if os.environ.get("SPECTRA_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
        return [ep for ep in eps if ep.name == CORE_PLUGIN]
    wanted = os.environ.get("SPECTRA_PLUGINS")
    if wanted is None:
        return eps
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    missing = names - {ep.name for ep in eps}
    if missing:
        raise PluginError(
            f"SPECTRA_PLUGINS names plugins that are not installed: {', '.join(sorted(missing))}",
            hint=f"installed: {', '.join(sorted(ep.name for ep in eps))}; pip install the missing ones",
        )
    return [ep for ep in eps if ep.name in names or ep.name == CORE_PLUGIN]


def _dist(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("<unknown>", "?")


def load_plugins(pm: pluggy.PluginManager) -> dict[str, PluginInfo]:
    """Import and register every selected entry point; errors name the distribution and entry point."""
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name != CORE_PLUGIN, ep.name))
    infos: dict[str, PluginInfo] = {}
    for ep in _selected(list(eps)):
        dist_name, version = _dist(ep)
        if ep.name in infos:
            raise PluginError(
                f"two distributions register the plugin name {ep.name!r}: "
                f"{infos[ep.name].distribution} and {dist_name}",
                hint="uninstall one of them",
            )
        try:
            module = importlib.import_module(ep.value.split(":")[0])
            plugin = getattr(module, ep.attr) if ep.attr else module
        except Exception as exc:  # a broken third-party plugin must not give a bare traceback
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist_name} {version} "
                f"(entry point '{ep.name} = {ep.value}') failed to import: {type(exc).__name__}: {exc}",
                hint=f"fix or `pip uninstall {dist_name}`; SPECTRA_PLUGINS=<names> loads only the plugins named",
            ) from exc
        _check_unmarked(plugin, ep.name, dist_name)
        pm.register(plugin, name=ep.name)
        infos[ep.name] = PluginInfo(ep.name, dist_name, version, f"{ep.name} = {ep.value}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        info = infos.get(pm.get_name(exc.plugin) or "")
        who = f"plugin {info.name!r} from distribution {info.distribution}" if info else "a plugin"
        unknown = sorted(h for h, caller in vars(pm.hook).items() if not h.startswith("_") and not caller.has_spec()
                         and any(i.plugin is exc.plugin for i in caller.get_hookimpls()))
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)))
        raise PluginError(f"{who} implements unknown hook(s) {', '.join(unknown)} (pluggy: {exc})",
                          hint=f"check the spelling; the hooks are: {known}") from None
    for info in infos.values():
        plugin = pm.get_plugin(info.name)
        info.hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
    return infos


def _check_unmarked(plugin: object, name: str, distribution: str) -> None:
    """A function named like a hook but without ``@hookimpl`` would be ignored silently: refuse it."""
    known = {n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)}
    for attr in sorted(known):
        fn = getattr(plugin, attr, None)
        if callable(fn) and not hasattr(fn, f"{hookspecs.PROJECT}_impl"):
            raise PluginError(f"plugin {name!r} from distribution {distribution} defines {attr}() without "
                              "@hookimpl, so it would be ignored",
                              hint="decorate it with @spectra_core.hookimpl")


def new_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm, load_plugins(pm)


@lru_cache(maxsize=1)
def get_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """The process-wide plugin manager (loaded once)."""
    return new_plugin_manager()
