"""Federated learning tasks: model builders, data loaders, evaluation, upload parsing.

The server imports only this subpackage (to build, evaluate and query the global
model), so it depends on nothing but numpy, TensorFlow (imported lazily, when a model is
built), scikit-learn and Pillow.

    from clients.tasks import get_task
    task = get_task("digits")
    model = task.build_model(seed=0)
    data = task.load_data()
    task.evaluate(model, data.x_test, data.y_test)   # {"loss": .., "accuracy": ..}

Add a task: subclass ``Task``, decorate with ``@register_task`` (see ``base.py``).
"""

from clients.tasks.base import Dataset, ImageClassificationTask, Task
from clients.tasks.config import TrainingConfig
from clients.tasks.registry import TASKS, get_task, register_task

__all__ = [
    "TASKS",
    "Dataset",
    "ImageClassificationTask",
    "Task",
    "TrainingConfig",
    "get_task",
    "register_task",
]
