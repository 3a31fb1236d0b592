"""The one place where tasks are registered and looked up.

``TASKS`` maps a name to a task instance. The built-ins are registered at the bottom of
this module; a researcher's own task registers itself with ``register_task`` (usable as
a class decorator) from its own module, touching nothing else.
"""

from __future__ import annotations

from typing import TypeVar

from clients.tasks.base import Task

TASKS: dict[str, Task] = {}

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
    """The registered task called ``name``; ValueError listing the known names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


def _register_builtins() -> None:
    from clients.tasks.digits import DigitsTask
    from clients.tasks.fashion import FashionTask
    from clients.tasks.linreg import LinRegTask

    for cls in (FashionTask, LinRegTask, DigitsTask):
        if cls.name not in TASKS:
            register_task(cls)


_register_builtins()
