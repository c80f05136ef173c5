"""Name -> builder registries (torchvision ``models/_api.py`` style).

Builders are registered by the package that defines them (``modalities.image`` registers its
backbones when imported). On its first lookup a registry imports the core modules that hold its
built-in entries and every *plugin*: the modules named by the ``capsmm.plugins`` entry points of
installed packages (capsmm's own ``pyproject.toml`` names ``modalities.image``,
``modalities.audio`` and ``modalities.hf``). So ``capsmm`` never imports a modality package by
name, and a package of your own registers its encoders and data sets the same way::

    [project.entry-points."capsmm.plugins"]
    my_modality = "my_package.capsmm_plugin"
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

PLUGIN_GROUP = "capsmm.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every module that an installed package names under the ``capsmm.plugins`` entry points (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        importlib.import_module(entry.value)


class Registry(Generic[T]):
    """A mapping from names to objects that refuses duplicates and explains unknown names."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtin_modules = builtin_modules
        self._builtins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. A second entry under one name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return add

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)
            load_plugins()

    def get(self, name: str) -> T:
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            valid = ", ".join(self.names()) or f"none registered (is capsmm installed? pip install -e . registers its {PLUGIN_GROUP})"
            raise ConfigError(f"unknown {self.kind} '{name}'{hint}; valid: {valid}") from None

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
