"""``python -m clients export``: a task's model as a trainable TensorFlow Lite file.

The second demo trained on a phone. This module writes the same Keras model as
:meth:`clients.tasks.Task.build_model` as a ``.tflite`` file with six signatures, so an
app holding only the TensorFlow Lite runtime (with the Select-TF-ops ``flex`` delegate)
can run a device's side of a round up to the encoder:

- ``train(x, y) -> loss``: one step of plain SGD, ``w <- w - lr * grad`` on the batch
  mean of the task's Keras loss, with the learning rate baked in at export (the task's
  own, or ``--lr``: use the experiment's ``[training] lr``);
- ``infer(x) -> output``: the model's output (logits for classifiers, ŷ for regression);
- ``get_weights() -> weights`` and ``set_weights(weights) -> weights``: the flat float32
  vector in the order of :func:`clients.tasks.weights.get_flat_weights`, which is what
  ``GET /v1/model`` serves (float32 little-endian bytes), so a global model fetched from
  the server can be installed as is and ``Δ = get_weights() - global`` is the update the
  DP encoder expects; ``set_weights`` refuses a vector holding NaN or infinity (as
  :func:`~clients.tasks.weights.set_flat_weights` does): the weights stay unchanged and
  its ``accepted`` output is 0 (1 when installed);
- ``save(path) -> path`` and ``restore(path) -> weights``: a checkpoint of the weights
  with ``tf.raw_ops.Save`` / ``Restore`` (tensor names ``weight_000``, ``weight_001``,
  ... by position, so a checkpoint fits every export of the same task).

Conversion follows TensorFlow's on-device-training guide: a ``tf.Module`` whose
``tf.function`` methods are the signatures, saved as a SavedModel and converted with
resource variables enabled and ``SELECT_TF_OPS`` allowed (the gradient and checkpoint
kernels are not TFLite builtins).

Privacy: the exported file holds the initial weights of ``build_model(seed)``, which are
public (every device and the server build them); it holds no data. Training on the phone
produces Δ in the clear on the phone only: clipping, noise, encoding and masking remain
the encoder's job (``dp.Encoder`` and ``secagg.ClientProtocol`` on the Python side).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from clients.tasks.base import Task

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["SIGNATURES", "ExportError", "build_parser", "export_tflite", "main", "task_lr"]

SIGNATURES = ("train", "infer", "get_weights", "set_weights", "save", "restore")
"""The signature keys of every exported model."""


class ExportError(ValueError):
    """A bad export request (unknown task, bad learning rate or seed); names the value."""


def task_lr(model: tf.keras.Model) -> float:
    """The learning rate the task compiled its model with (its plain-SGD optimizer)."""
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise ExportError("the task's model is not compiled: build_model() must compile it")
    return float(opt.learning_rate.numpy())


def _check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ExportError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


def _loss_fn(model: tf.keras.Model) -> Any:
    """The compiled Keras loss as a callable ``(y_true, y_pred) -> scalar``."""
    import tensorflow as tf

    loss = getattr(model, "loss", None)
    if loss is None:
        raise ExportError("the task's model has no compiled loss: build_model() must compile it")
    if isinstance(loss, str):
        return tf.keras.losses.get(loss)
    if isinstance(loss, list | tuple | dict):
        raise ExportError(f"only single-output models can be exported, got loss {loss!r}")
    return loss


def _trainable_module(task: Task, model: tf.keras.Model, lr: float) -> tf.Module:
    """The ``tf.Module`` whose ``tf.function`` methods become the TFLite signatures."""
    import numpy as np
    import tensorflow as tf

    x_spec = tf.TensorSpec([None, *task.input_shape], tf.float32, name="x")
    y_dtype = tf.float32 if task.num_classes is None else tf.int64
    y_spec = tf.TensorSpec([None], y_dtype, name="y")
    variables = list(model.weights)  # the order of get_flat_weights / GET /v1/model
    trainable = list(model.trainable_variables)
    sizes = [int(np.prod(v.shape)) for v in variables]
    dim = int(sum(sizes))
    loss_fn = _loss_fn(model)
    names = [f"weight_{i:03d}" for i in range(len(variables))]
    path_spec = tf.TensorSpec([], tf.string, name="path")

    def flat() -> tf.Tensor:
        return tf.concat([tf.reshape(v, [-1]) for v in variables], axis=0)

    class Trainable(tf.Module):
        def __init__(self) -> None:
            super().__init__(name=f"{task.name}_trainable")
            self.model = model

        @tf.function(input_signature=[x_spec, y_spec])
        def train(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
            with tf.GradientTape() as tape:
                pred = self.model(x, training=True)
                loss = loss_fn(y, pred)
                if self.model.losses:  # regularizers, as Keras' train_step adds them
                    loss += tf.add_n(self.model.losses)
            grads = tape.gradient(loss, trainable)
            for var, grad in zip(trainable, grads, strict=True):
                var.assign_sub(lr * grad)
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"output": self.model(x, training=False)}

        @tf.function(input_signature=[])
        def get_weights(self) -> dict[str, tf.Tensor]:
            return {"weights": flat()}

        @tf.function(input_signature=[tf.TensorSpec([dim], tf.float32, name="weights")])
        def set_weights(self, weights: tf.Tensor) -> dict[str, tf.Tensor]:
            # The converter drops CheckNumerics, so refusal is data flow: a vector with
            # NaN or infinity leaves every variable as it was and reports accepted = 0.
            accepted = tf.reduce_all(tf.math.is_finite(weights))
            offset = 0
            for var, size in zip(variables, sizes, strict=True):
                new = tf.reshape(weights[offset : offset + size], var.shape)
                var.assign(tf.where(accepted, new, var.read_value()))
                offset += size
            return {"weights": flat(), "accepted": tf.cast(accepted, tf.int32)}

        @tf.function(input_signature=[path_spec])
        def save(self, path: tf.Tensor) -> dict[str, tf.Tensor]:
            tf.raw_ops.Save(
                filename=path,
                tensor_names=names,
                data=[v.read_value() for v in variables],
                name="save",
            )
            return {"path": path}

        @tf.function(input_signature=[path_spec])
        def restore(self, path: tf.Tensor) -> dict[str, tf.Tensor]:
            for var, name in zip(variables, names, strict=True):
                value = tf.raw_ops.Restore(
                    file_pattern=path, tensor_name=name, dt=var.dtype, name="restore"
                )
                var.assign(tf.ensure_shape(value, var.shape))
            return {"weights": flat()}

    return Trainable()


def export_tflite(task: Task | str, lr: float | None = None, seed: int = 0) -> bytes:
    """The task's model (initial weights of ``build_model(seed)``) as a trainable TFLite file.

    ``lr``: the SGD learning rate of the ``train`` signature; ``None`` takes the one the
    task compiled its model with. Raises :class:`ExportError` for an unknown task or a bad
    ``lr`` / ``seed``.
    """
    from clients.tasks import get_task

    if isinstance(task, str):
        try:
            task = get_task(task)
        except ValueError as err:
            raise ExportError(str(err)) from None
    if not isinstance(task, Task):
        raise ExportError(f"task must be a Task or a registered name, got {task!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ExportError(f"seed must be an int >= 0, got {seed!r}")
    import tensorflow as tf

    model = task.build_model(seed=seed)
    rate = task_lr(model) if lr is None else _check_lr(lr)
    module = _trainable_module(task, model, rate)
    signatures = {k: getattr(module, k).get_concrete_function() for k in SIGNATURES}
    with tempfile.TemporaryDirectory(prefix="secagg-dp-export-") as saved:
        tf.saved_model.save(module, saved, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
        converter.experimental_enable_resource_variables = True
        return bytes(converter.convert())


# ------------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 2 inside the block.

    The converter prints a multi-line report of the ops it left to TensorFlow straight
    from C++, past Python's ``sys.stderr``; the CLI prints one line of its own instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be in 0..4294967295, got {text!r}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m clients export``."""
    from clients.options import plugin_help

    p = parser if parser is not None else _OneLineParser(prog="python -m clients export")
    p.description = (
        "Write a task's model as a TensorFlow Lite file with on-device training signatures: "
        + ", ".join(SIGNATURES)
        + "."
    )
    p.add_argument("--task", required=True, help=f"task to export: {plugin_help('task')}")
    p.add_argument("--out", required=True, type=Path, help="the .tflite file to write")
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="SGD learning rate of the train signature (default: the task's own; "
        "pass the experiment's [training] lr)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="initial weights of build_model(seed) (default 0; an app replaces "
        "them with set_weights from GET /v1/model)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clients export``; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 with one line on a bad flag
    out: Path = args.out
    if out.exists() and out.is_dir():
        print(f"{parser.prog}: error: --out is a directory: {str(out)!r}", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(
            f"{parser.prog}: error: folder of --out does not exist: {str(out.parent)!r}",
            file=sys.stderr,
        )
        return 2
    from tensorflow.lite.python.convert import ConverterError

    try:
        with _native_stderr_silenced():
            blob = export_tflite(args.task, lr=args.lr, seed=args.seed)
    except ExportError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except ConverterError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{parser.prog}: error: conversion failed: {first}", file=sys.stderr)
        return 1
    try:
        out.write_bytes(blob)
    except OSError as err:
        print(f"{parser.prog}: error: cannot write {str(out)!r}: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {out} ({len(blob):,} bytes): signatures {', '.join(SIGNATURES)}; "
        "run it with the TensorFlow Lite Select TF ops (flex) delegate"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
