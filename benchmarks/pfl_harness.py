"""Run pfl-research's simulation of the ``sim`` workload and print seconds per round.

This file runs inside pfl-research's own venv (``benchmarks/.pfl-venv``, PyPI ``pfl``
with its TensorFlow extra), never in the project's venv: pfl needs TensorFlow >= 2.16
and numpy 2, we pin TensorFlow 2.15. It imports ``sim_workload`` (beside it: numpy and
the project's IDX parser only) and nothing else from this repository.
``benchmarks/baselines.py`` starts it::

    benchmarks/.pfl-venv/bin/python benchmarks/pfl_harness.py --rounds 12

pfl is used the way its own benchmarks use it (``benchmarks/image_classification/tf/
train.py`` in apple/pfl-research): a Keras model wrapped in ``TFModel`` with an SGD
local optimizer whose rate pfl overrides with ``local_learning_rate``, a central SGD
optimizer at rate 1.0 (FedAvg: the new model is the mean of the devices' models),
``FederatedAveraging``, a ``FederatedDataset`` of per-user datasets sampled by
``MinimizeReuseUserSampler``, ``SimulatedBackend`` with ``WeightByDatapoints``. One
process, one model, trained in place user after user (pfl's design); no DP, no secure
aggregation, no network.

What is timed: each central iteration, from the end of the previous one (or from
``on_train_begin``) to its ``after_central_iteration`` callback (which then runs the
paired compiled-floor pass, outside the timed span): sampling the cohort,
every user's local training, pfl's aggregation and the central update. Central
evaluation is not in the loop (no ``CentralEvaluationCallback``, no validation cohort);
the test accuracy is computed once after the last round. pfl evaluates each user's
local metrics in iteration 0 (its ``evaluation_frequency`` schedule always fires there),
which is one more reason to discard warm-up rounds.

Keras: pfl 0.6's ``TFModel`` keys the model's variables by ``variable.name``. Under
Keras 3 (TensorFlow 2.16+'s default ``tf.keras``) that name is the bare ``kernel`` or
``bias``, so the map keeps only the last layer's two variables: every other layer is then
never reset between users nor averaged, and the "FedAvg" run is really sequential SGD
through the whole cohort (it reaches 0.78 test accuracy in 4 rounds where FedAvg reaches
0.22). So the harness runs pfl on legacy Keras (``tf_keras``, installed with pfl's
``tf`` extra; ``TF_USE_LEGACY_KERAS=1``), whose names are unique (``conv2d/kernel:0``),
and refuses to run if ``TFModel.variable_map`` does not hold every trainable variable.
``--keras 3`` is kept only to show that refusal.

Prints one ``BENCH_RESULT {json}`` line (see ``sim_workload.emit``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import sim_workload as wl  # noqa: E402

FRAMEWORK = "pfl-research"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pfl
    import tensorflow as tf
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.tensorflow import TFModel

    np.random.seed(args.seed)  # pfl's user sampler and seeds draw from numpy's global rng
    tf.random.set_seed(args.seed)
    m = wl.Measurement(args)  # data, shards, the traced floor
    x_train, y_train, shards = m.x_train, m.y_train, m.shards

    def make_dataset(user_id: int) -> Dataset:
        idx = shards[user_id]
        return Dataset(raw_data=[x_train[idx], y_train[idx]], user_id=user_id)

    federated = FederatedDataset(
        make_dataset, get_user_sampler("minimize_reuse", list(range(args.devices)))
    )
    keras_model = wl.build_fashion_cnn(args.seed)
    wl.check_params(keras_model)
    keras_model.compile(
        tf.keras.optimizers.SGD(args.lr),  # pfl resets it to local_learning_rate per user
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model = TFModel(
        model=keras_model,
        metrics={"accuracy": tf.keras.metrics.SparseCategoricalAccuracy()},
        central_optimizer=tf.keras.optimizers.SGD(1.0),
    )
    if len(model.variable_map) != len(keras_model.trainable_variables):
        raise RuntimeError(
            f"pfl's TFModel maps {len(model.variable_map)} of the model's "
            f"{len(keras_model.trainable_variables)} variables (names "
            f"{sorted(model.variable_map)}): it would not reset or average the rest; "
            "run with --keras legacy"
        )
    backend = SimulatedBackend(
        training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()]
    )

    class RoundTimer(TrainingProcessCallback):  # type: ignore[misc]
        """Wall time of each central iteration (callback to callback)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._last = 0.0

        def on_train_begin(self, *, model: Any) -> Metrics:
            self._last = time.perf_counter()
            return Metrics()

        def after_central_iteration(
            self, aggregate_metrics: Metrics, model: Any, *, central_iteration: int
        ) -> tuple[bool, Metrics]:
            self.times.append(time.perf_counter() - self._last)
            m.between_rounds()  # the paired floor pass, outside the round's time
            self._last = time.perf_counter()
            return False, Metrics()

    timer = RoundTimer()
    t0 = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=args.rounds + 1,
            train_cohort_size=args.cohort,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.lr,
            local_num_epochs=args.epochs,
            local_batch_size=args.batch,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[timer],
    )
    total = time.perf_counter() - t0
    version = getattr(pfl, "__version__", "") or wl.dist_version("pfl")
    return m.record(FRAMEWORK, version, timer.times, total, keras_model)


def main(argv: list[str] | None = None) -> int:
    parser = wl.workload_parser(__doc__.splitlines()[0])
    return wl.harness_main(FRAMEWORK, parser, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
