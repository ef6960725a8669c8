"""The strategy registry: named strategy classes per stage, and named methods, from all plugins."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel

from .errors import ConfigError, PluginError
from .plugins import PluginInfo, get_plugin_manager
from .strategies import STAGE_BASES, STAGES, Method, Stage, Strategy

HOOK_OF_STAGE: dict[Stage, str] = {
    "quantizer": "spectra_quantizers",
    "scorer": "spectra_scorers",
    "allocator": "spectra_allocators",
    "gradient_merger": "spectra_gradient_mergers",
    "rebalancer": "spectra_rebalancers",
    "exporter": "spectra_exporters",
}


@dataclass
class Registry:
    """Strategy classes by stage and name, methods by name, and which plugin provided each."""

    strategies: dict[Stage, dict[str, type[Strategy]]] = field(default_factory=lambda: {s: {} for s in STAGES})
    methods: dict[str, Method] = field(default_factory=dict)
    provider: dict[tuple[str, str], str] = field(default_factory=dict)  # (stage|"method", name) -> plugin
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]) -> Registry:
        reg = cls(plugins=plugins)
        for stage in STAGES:
            for impl in getattr(pm.hook, HOOK_OF_STAGE[stage]).get_hookimpls():
                for item in _call(impl, plugins):
                    reg.add_strategy(stage, item, impl.plugin_name)
        for impl in pm.hook.spectra_methods.get_hookimpls():
            for method in _call(impl, plugins):
                reg.add_method(method, impl.plugin_name)
        return reg

    def _dist(self, plugin: str) -> str:
        info = self.plugins.get(plugin)
        return f"{info.distribution} (plugin {plugin!r})" if info else f"plugin {plugin!r}"

    def add_strategy(self, stage: Stage, cls_: Any, plugin: str) -> None:
        base = STAGE_BASES[stage]
        if not (isinstance(cls_, type) and issubclass(cls_, base)):
            raise PluginError(
                f"{self._dist(plugin)} returned {cls_!r} from {HOOK_OF_STAGE[stage]}(); "
                f"expected a subclass of spectra_core.strategies.{base.__name__}",
                hint="return strategy classes (not instances) from registration hooks",
            )
        name = getattr(cls_, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self._dist(plugin)}: {cls_.__qualname__} has no string `name`",
                              hint="set a class attribute name = '...'")
        if inspect.isabstract(cls_):
            missing = ", ".join(sorted(cls_.__abstractmethods__))
            raise PluginError(f"{self._dist(plugin)}: {stage} {name!r} ({cls_.__qualname__}) does not implement "
                              f"{missing}", hint=f"define {missing} in {cls_.__qualname__} (see the "
                                                 f"{base.__name__} contract in docs/reference/hooks.md)")
        options = getattr(cls_, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)
                and options.model_config.get("extra") == "forbid"):
            raise PluginError(f"{self._dist(plugin)}: {stage} {name!r} ({cls_.__qualname__}) has an Options class "
                              f"{getattr(options, '__qualname__', options)!r} that would silently drop unknown keys",
                              hint="derive Options from spectra_core.StrategyOptions (it forbids unknown keys)")
        if name in self.strategies[stage]:
            other = self.provider[(stage, name)]
            raise PluginError(
                f"duplicate {stage} name {name!r}: provided by {self._dist(other)} and {self._dist(plugin)}",
                hint="uninstall one of the two distributions, or rename the strategy",
            )
        self.strategies[stage][name] = cls_
        self.provider[(stage, name)] = plugin

    def add_method(self, method: Any, plugin: str) -> None:
        if not isinstance(method, Method):
            raise PluginError(f"{self._dist(plugin)} returned {method!r} from spectra_methods(); "
                              "expected spectra_core.strategies.Method")
        if method.name in self.methods:
            other = self.provider[("method", method.name)]
            raise PluginError(f"duplicate method name {method.name!r}: provided by {self._dist(other)} "
                              f"and {self._dist(plugin)}", hint="uninstall one of the two distributions")
        self.methods[method.name] = method
        self.provider[("method", method.name)] = plugin

    def get(self, stage: Stage, name: str) -> type[Strategy]:
        try:
            return self.strategies[stage][name]
        except KeyError:
            available = ", ".join(sorted(self.strategies[stage])) or "none installed"
            raise ConfigError(f"unknown {stage} {name!r}", hint=f"available: {available}") from None

    def create(self, stage: Stage, name: str, options: dict[str, Any] | None = None) -> Strategy:
        return self.get(stage, name)(options)

    def method(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            available = ", ".join(sorted(self.methods)) or "none installed"
            raise ConfigError(f"unknown method {name!r}", hint=f"available: {available}") from None


def _call(impl: pluggy.HookImpl, plugins: dict[str, PluginInfo]) -> list[Any]:
    try:
        result = impl.function()
    except Exception as exc:
        info = plugins.get(impl.plugin_name)
        who = info.distribution if info else impl.plugin_name
        raise PluginError(f"{who} (plugin {impl.plugin_name!r}) raised in {impl.function.__name__}(): {exc}") from exc
    if not isinstance(result, (list, tuple)):
        info = plugins.get(impl.plugin_name)
        who = info.distribution if info else impl.plugin_name
        raise PluginError(f"{who} (plugin {impl.plugin_name!r}): {impl.function.__name__}() returned "
                          f"{type(result).__name__}, expected a list", hint="return a list from every hook")
    return list(result)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built from every loaded plugin on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.from_plugin_manager(*get_plugin_manager())
    return _REGISTRY
