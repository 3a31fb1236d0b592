"""Run ONE Flower 1.41 SecAgg+ round in one process and print its wall time as JSON.

This file runs inside the separate Flower venv (``benchmarks/.flower-venv``), never in
the project's venv: it imports ``flwr`` and nothing from this repository. The cost
benchmark (``benchmarks/cost.py``) starts it as a subprocess::

    benchmarks/.flower-venv/bin/python benchmarks/flower_harness.py \
        --clients 100 --dim 100000 --num-shares 11 --threshold 6 --dropped 10

What is measured: the wall time of Flower's whole SecAgg+ fit round, i.e. the call of
``SecAggPlusWorkflow`` (setup, share keys, collect masked vectors, unmask, FedAvg
aggregation) inside ``DefaultWorkflow(fit_workflow=...)``. The ClientApps (a
``NumPyClient`` returning a fixed float32 vector of length ``dim``, wrapped by
``secaggplus_mod``) run inside the grid calls, one after the other on this core, so the
figure includes every client's work and the server's, exactly like our ``run_round``.
The transport is a small in-process ``Grid`` written here: it deep-copies each
instruction (what serialisation would do; Flower's mods mutate the records they
receive) and calls the ClientApp directly; no network, no sleeps, no polling. Dropped
clients stop answering from the stage named by ``--drop-stage`` on (default: before
they send their masked vector, the expensive case for the server).

The harness also checks the result: the aggregated parameters must equal the mean of
the survivors' vectors up to Flower's quantisation error; ``ok`` says whether they do.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import numpy as np

try:
    import flwr
    from flwr.app import Context, Message, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
        Stage,
    )
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import Grid, LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
except ImportError as exc:  # pragma: no cover - depends on the venv
    print(
        f"error: flwr is not importable in {sys.executable} ({exc}); run this file with "
        "benchmarks/.flower-venv/bin/python (create it with: python3.11 -m venv "
        "benchmarks/.flower-venv && benchmarks/.flower-venv/bin/pip install 'flwr==1.41.*')",
        file=sys.stderr,
    )
    raise SystemExit(3) from exc

STAGE_ORDER = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
CLIPPING_RANGE = 8.0
# Each client's weight is 1 (num_examples=1), so max_weight=1 keeps Flower's weight
# factor exact; 2**20 quantisation levels keep n <= 1000 summands inside its 2**32 modulus.
MAX_WEIGHT = 1.0
QUANTIZATION_RANGE = 2**20
MODULUS_RANGE = 2**32


def client_vector(node_id: int, dim: int, seed: int) -> np.ndarray:
    """The float32 update of one client (benchmark data, not secret)."""
    rng = np.random.default_rng([seed, node_id])
    return rng.uniform(-1.0, 1.0, size=dim).astype(np.float32)


class BenchClient(NumPyClient):  # type: ignore[misc]
    """A client whose 'training' returns a fixed vector: only SecAgg+ costs time."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[
        list[np.ndarray], int, dict[str, Any]
    ]:
        return [self.vector], 1, {}


class InProcessGrid(Grid):  # type: ignore[misc]
    """A Grid that delivers each instruction by calling the ClientApp in this process.

    ``drop_stage[node]`` is the SecAgg+ stage from which that node stops answering
    (it vanishes before replying to that stage's instruction, and to all later ones).
    """

    def __init__(
        self,
        app: ClientApp,
        node_ids: list[int],
        drop_stage: dict[int, str],
        run_id: int = 1,
    ) -> None:
        self._app = app
        self._node_ids = list(node_ids)
        self._drop_stage = dict(drop_stage)
        self._run = Run.create_empty(run_id)
        self._contexts = {
            nid: Context(
                run_id=run_id, node_id=nid, node_config={}, state=RecordDict(), run_config={}
            )
            for nid in node_ids
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def _dropped(self, msg: Message) -> bool:
        nid = msg.metadata.dst_node_id
        stage_at = self._drop_stage.get(nid)
        if stage_at is None:
            return False
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None or Key.STAGE not in configs:
            return False
        stage = str(configs[Key.STAGE])
        return STAGE_ORDER.index(stage) >= STAGE_ORDER.index(stage_at)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            if self._dropped(msg):
                continue
            delivered = Message(
                copy.deepcopy(msg.content), metadata=copy.deepcopy(msg.metadata)
            )
            reply = self._app(delivered, self._contexts[msg.metadata.dst_node_id])
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))


def run_flower_round(
    clients: int,
    dim: int,
    num_shares: int,
    threshold: int,
    dropped: int,
    drop_stage: str = Stage.COLLECT_MASKED_VECTORS,
    seed: int = 0,
) -> dict[str, Any]:
    """Run one SecAgg+ round; return timings and the correctness check."""
    # The identity the ServerApp process would have (set as flwr.server.compat.app does).
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    node_ids = list(range(SUPERLINK_NODE_ID + 1, SUPERLINK_NODE_ID + 1 + clients))
    rng = np.random.default_rng(seed)
    dropped_ids = sorted(int(x) for x in rng.choice(node_ids, size=dropped, replace=False))
    vectors = {nid: client_vector(nid, dim, seed) for nid in node_ids}

    def client_fn(context: Context) -> Any:
        return BenchClient(vectors[context.node_id]).to_client()

    app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    grid = InProcessGrid(app, node_ids, {nid: drop_stage for nid in dropped_ids})

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_evaluate_clients=0,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
    )
    server_ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(server_ctx, config=ServerConfig(num_rounds=1), strategy=strategy)

    secagg = SecAggPlusWorkflow(
        num_shares=num_shares, reconstruction_threshold=threshold,
        clipping_range=CLIPPING_RANGE, max_weight=MAX_WEIGHT,
        quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
    )
    fit_seconds: list[float] = []
    fit_cpu: list[float] = []

    def timed_fit(grid_: Grid, ctx: Context) -> None:
        cpu0 = time.process_time()  # all threads (Flower's Shamir uses a thread pool)
        start = time.perf_counter()
        secagg(grid_, ctx)
        fit_seconds.append(time.perf_counter() - start)
        fit_cpu.append(time.process_time() - cpu0)

    start = time.perf_counter()
    DefaultWorkflow(fit_workflow=timed_fit)(grid, context)
    workflow_s = time.perf_counter() - start

    survivors = [nid for nid in node_ids if nid not in set(dropped_ids)]
    expected = np.mean([vectors[nid].astype(np.float64) for nid in survivors], axis=0)
    params = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )
    got = parameters_to_ndarrays(params)[0].astype(np.float64)
    err = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    return {
        "flwr_version": getattr(flwr, "__version__", "?"),
        "clients": clients,
        "dim": dim,
        "num_shares": num_shares,
        "threshold": threshold,
        "dropped": dropped,
        "drop_stage": drop_stage,
        "round_s": fit_seconds[0] if fit_seconds else None,
        "round_cpu_s": fit_cpu[0] if fit_cpu else None,
        "workflow_s": workflow_s,
        "max_abs_err": err,
        "ok": bool(fit_seconds) and err < 1e-3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--num-shares", type=int, required=True,
                        help="Flower's num_shares: neighbours + 1 (self); n for complete")
    parser.add_argument("--threshold", type=int, required=True)
    parser.add_argument("--dropped", type=int, default=0)
    parser.add_argument("--drop-stage", choices=STAGE_ORDER, default=Stage.COLLECT_MASKED_VECTORS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    result = run_flower_round(
        args.clients, args.dim, args.num_shares, args.threshold, args.dropped,
        args.drop_stage, args.seed,
    )
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
