"""Registries of plug-ins: built-ins, installed entry points and ``module:attr`` paths.

Tasks (:mod:`clients.tasks.registry`), noise mechanisms (:mod:`dp.mechanisms`) and neighbour
graphs (:mod:`secagg.graph`) each live in one :class:`PluginRegistry`. A name resolves, in
this order, to

1. an entry registered in this process (the built-ins, ``register_*`` calls, and every
   name resolved before);
2. an entry point of the registry's group (``secagg_dp.tasks``, ``secagg_dp.mechanisms``,
   ``secagg_dp.graphs``) declared by an installed package: its name is the key, its value
   ``package.module:Attr``; loaded on first use, never just for listing;
3. an import path ``package.module:Attr`` (``Attr`` may be dotted): the module is imported
   and the attribute registered under the whole path string. Configs keep that string, so
   every process of a run (the ``python -m server`` subprocess, Ray workers) imports the
   same path from the same ``PYTHONPATH``.

Threat model of step 3: importing a module runs its code. A path is imported only when
imports are allowed (:func:`allow_imports`), which they are by default: the operator's own
command line and config files name them. A device process that parses round parameters
and encoding plans sent by an untrusted server turns them off (``python -m clients
device`` does, after loading its own plug-ins): a server can then only name what the
device registered itself, never make it import a module.

Only the standard library here. ``clients.tasks`` and ``dp`` import it only when a name
is not registered yet (:class:`PluginResolver`), so importing them stays as light as it was.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

__all__ = [
    "PluginError",
    "PluginRegistry",
    "PluginResolver",
    "allow_imports",
    "imports_allowed",
    "is_import_path",
    "load_attr",
]

T = TypeVar("T")

_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_imports_allowed = True


class PluginError(ValueError):
    """A plug-in name that cannot be resolved, or an object of the wrong kind."""


def allow_imports(allowed: bool) -> None:
    """Allow (default) or forbid resolving ``module:attr`` paths by importing them.

    Forbid it in a process that validates names chosen by someone it does not trust
    (a device parsing what the server sent): see the module docstring."""
    global _imports_allowed
    if not isinstance(allowed, bool):
        raise TypeError(f"allow_imports needs a bool, got {allowed!r}")
    _imports_allowed = allowed


def imports_allowed() -> bool:
    """Whether ``module:attr`` names may still be imported in this process."""
    return _imports_allowed


def is_import_path(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:Attr`` (dotted parts allowed)."""
    return isinstance(name, str) and _PATH.match(name) is not None


def load_attr(path: str) -> Any:
    """Import ``package.module`` and return its attribute ``Attr`` (``PluginError``
    naming the path when the module or the attribute is missing)."""
    if not is_import_path(path):
        raise PluginError(f"{path!r} is not an import path of the form package.module:Attr")
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{module_name!r} has no attribute {attr!r} ({path!r})") from None
    return obj


class PluginResolver(Generic[T]):
    """How one kind of plug-in is found: its entry-point group and how what a path or an
    entry point names becomes a plug-in (``adopt(obj, name)``, e.g. instantiating a
    class; ``TypeError`` for anything of the wrong kind). It resolves names into a
    ``store`` (a dict of name -> plug-in), registering what it loads there.

    :class:`PluginRegistry` is a dict with one built in. ``clients.tasks`` and ``dp``
    keep their own dicts and build a resolver on first need, so importing them does not
    import this package (the server imports ``clients.tasks`` alone).
    """

    def __init__(self, kind: str, group: str, adopt: Callable[[Any, str], T]) -> None:
        self.kind = kind
        self.group = group
        self._adopt = adopt
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The installed entry points of this group, by name (read once)."""
        if self._entry_points is None:
            found = importlib.metadata.entry_points(group=self.group)
            self._entry_points = {ep.name: ep for ep in found}
        return self._entry_points

    def refresh(self) -> None:
        """Forget the entry points read so far (after installing a package)."""
        self._entry_points = None

    def names(self, store: Mapping[str, T]) -> list[str]:
        """Every name :meth:`resolve` accepts without an import path: the registered ones
        (built-ins first, in registration order) and the installed entry points."""
        return list(store) + sorted(n for n in self.entry_points() if n not in store)

    def adopt(self, obj: Any, name: str) -> T:
        """The plug-in that ``obj`` (found under ``name``) stands for (``PluginError``)."""
        try:
            return self._adopt(obj, name)
        except TypeError as exc:
            raise PluginError(f"{self.kind} {name!r}: {exc}") from None

    def resolve(self, store: MutableMapping[str, T], name: object) -> T:
        """The plug-in called ``name``: in ``store``, an entry point, or an import path
        (imported and stored under ``name``, if imports are allowed). Raises
        :class:`PluginError` (a ``ValueError``) listing the known names otherwise."""
        if not isinstance(name, str):
            raise PluginError(f"{self.kind} name must be a string, got {name!r}")
        found = store.get(name)
        if found is not None:
            return found
        ep = self.entry_points().get(name)
        if ep is not None:
            try:
                obj = ep.load()
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{self.kind} {name!r}: cannot load entry point {ep.value!r} of "
                    f"{self.group}: {exc}"
                ) from None
            plugin = self.adopt(obj, name)
            store[name] = plugin
            return plugin
        known = ", ".join(self.names(store))
        if is_import_path(name):
            if not imports_allowed():
                raise PluginError(
                    f"unknown {self.kind} {name!r}: this process does not import plug-ins "
                    f"named by others; known: {known}"
                )
            plugin = self.adopt(load_attr(name), name)
            store[name] = plugin
            return plugin
        raise PluginError(f"unknown {self.kind} {name!r}; known: {known}, or package.module:Attr")


class PluginRegistry(dict[str, T]):
    """A ``dict`` of name -> plug-in that also resolves entry points and import paths.

    The plain ``dict`` operations (``in``, ``[]``, ``.get``, iteration) see only what is
    registered in this process and never import anything. :meth:`resolve` is the lookup
    that also loads entry points and import paths; :meth:`names` lists what can be
    resolved by name (registered entries and entry points, without loading them).
    """

    def __init__(self, kind: str, group: str, adopt: Callable[[Any, str], T]) -> None:
        super().__init__()
        self.resolver = PluginResolver(kind, group, adopt)

    def names(self) -> list[str]:
        """Registered names, then installed entry points (:meth:`PluginResolver.names`)."""
        return self.resolver.names(self)

    def refresh(self) -> None:
        """Forget the entry points read so far (after installing a package)."""
        self.resolver.refresh()

    def resolve(self, name: object) -> T:
        """The plug-in called ``name`` (:meth:`PluginResolver.resolve`)."""
        return self.resolver.resolve(self, name)
