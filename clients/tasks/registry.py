"""The one place where tasks are registered and looked up.

``TASKS`` maps a name to a task instance (a ``dict``; :meth:`TaskRegistry.resolve`
also loads plug-ins, :mod:`secagg.plugins`). The built-ins are registered at the bottom
of this module. A researcher's own task needs no edit here; it becomes reachable in any
of three ways:

- by import path: ``--task package.module:Class`` (and ``task = "package.module:Class"``
  in a TOML config). :func:`get_task` imports the module, instantiates the ``Task``
  subclass and registers it under the whole path, which is what configs record: the
  server subprocess and Ray workers import the same path (from the same ``PYTHONPATH``);
- by entry point: an installed package declares ``name = "package.module:Class"`` in the
  ``secagg_dp.tasks`` group, and ``name`` is accepted wherever a task is;
- by ``@register_task`` on the class, once its module has been imported in the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from clients.tasks.base import Task

if TYPE_CHECKING:
    from secagg.plugins import PluginResolver


def _adopt_task(obj: Any, name: str) -> Task:
    """A Task instance from a ``Task`` subclass (reusing the instance registered for that
    class, if any, so a module that also uses ``@register_task`` shares one) or instance."""
    if isinstance(obj, type) and issubclass(obj, Task):
        same = [t for t in TASKS.values() if type(t) is obj]
        obj = same[0] if same else obj()
    if not isinstance(obj, Task):
        raise TypeError(f"needs a Task subclass or instance, got {obj!r}")
    return obj


class TaskRegistry(dict[str, Task]):
    """Name -> task. The ``dict`` operations see what is registered in this process and
    import nothing; :meth:`resolve` also loads entry points and import paths (with
    :class:`secagg.plugins.PluginResolver`, imported on first need: importing
    ``clients.tasks`` stays free of secagg, dp and the device code)."""

    _resolver: PluginResolver[Task] | None = None

    def _plugins(self) -> PluginResolver[Task]:
        if self._resolver is None:
            from secagg.plugins import PluginResolver

            self._resolver = PluginResolver("task", "secagg_dp.tasks", _adopt_task)
        return self._resolver

    def names(self) -> list[str]:
        """Registered names (built-ins first), then installed entry points (not loaded)."""
        return self._plugins().names(self)

    def refresh(self) -> None:
        """Forget the entry points read so far (after installing a package)."""
        self._plugins().refresh()

    def resolve(self, name: object) -> Task:
        """The task called ``name``: registered, an entry point or an import path."""
        found = self.get(name) if isinstance(name, str) else None
        return found if found is not None else self._plugins().resolve(self, name)


TASKS = TaskRegistry()

T = TypeVar("T", bound="type[Task] | Task")


def register_task(task: T, *, replace: bool = False) -> T:
    """Register a ``Task`` subclass (instantiated with no arguments) or a ``Task`` instance.

    Returns its argument, so it works as a class decorator. Raises ValueError if the name
    is taken (unless ``replace=True``) and TypeError for anything that is not a Task.
    """
    if isinstance(task, type):
        if not issubclass(task, Task):
            raise TypeError(f"register_task needs a Task subclass, got {task!r}")
        instance = task()
    elif isinstance(task, Task):
        instance = task
    else:
        raise TypeError(f"register_task needs a Task subclass or instance, got {task!r}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name or not name.isidentifier():
        raise ValueError(f"task name must be a non-empty identifier, got {name!r}")
    if name in TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered ({TASKS[name]!r})")
    TASKS[name] = instance
    return task


def get_task(name: str) -> Task:
    """The task called ``name``: registered, an installed ``secagg_dp.tasks`` entry point,
    or a ``package.module:Class`` path (imported; see the module docstring). ValueError
    listing the known names otherwise."""
    return TASKS.resolve(name)


def _register_builtins() -> None:
    from clients.tasks.digits import DigitsTask
    from clients.tasks.fashion import FashionTask
    from clients.tasks.linreg import LinRegTask

    for cls in (FashionTask, LinRegTask, DigitsTask):
        if cls.name not in TASKS:
            register_task(cls)


_register_builtins()
