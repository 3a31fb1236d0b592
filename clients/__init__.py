"""Devices, simulations and the Python API of secagg-dp.

The common path is one import (see :mod:`clients.api`):

```python
from clients import Experiment

result = Experiment("digits", target_epsilon=8.0, engine="local", rounds=2).run()
```

- ``clients.api``: :class:`Experiment` (plan and run an experiment),
  :class:`RunResult` and :class:`RoundRecord` (the round log, typed).
- ``clients.plan``: ``python -m clients plan`` (what a run will use and charge).
- ``clients.tasks``: models and data (the only part the server imports).
- ``clients.device``: one device over HTTP (``python -m clients device``).
- ``clients.engines``: the ``local``, ``ray`` and ``http`` engines of
  ``python -m clients run``; ``clients.options`` holds every option of a run.

Nothing heavy is imported here (the API's names load on first use), so importing
``clients.tasks`` from the server does not pull in the device or simulation code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.api import Experiment, ExperimentPlan, RoundRecord, RunResult

__all__ = ["Experiment", "ExperimentPlan", "RoundRecord", "RunResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clients import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
