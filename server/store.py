"""Persistent state of the server: one SQLite file, one class.

What is stored (and what is not) is part of the privacy argument. The server is
honest-but-curious and must not learn individual updates; the store therefore holds only:

- ``devices``: device id and its raw Ed25519 public key (long-term identity);
- ``models``: global model versions (float32 little-endian bytes) and the server's FedAvgM
  momentum buffer (an aggregate of means, never a single device's update);
- ``rounds``: the round log (sampled ids, survivors, dropouts per stage, accuracy, loss, ε,
  timings, status) plus the round's public encoding plan and survivor count, from which the
  privacy accountant is rebuilt after a restart;
- ``meta``: small key/value facts (task name, model dimension, sampling rate);
- ``nonces``: (device id, request nonce, expiry) of authenticated requests still inside
  the timestamp window, so that a request replayed after a restart is refused too;
- ``control_log``: every operator change (pause, resume, rounds planned, cohort, ε budget,
  devices enabled or disabled) with its time and the round it applies from, because a
  change of cohort or budget changes the privacy accounting (``server.control``).

It never holds a device's vector, masked or not: masked inputs are folded into a running
sum in memory by ``secagg.AggregatorProtocol`` and the request body is dropped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NonceVerdict", "Store", "StoredModel", "StoreError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,
    round INTEGER,
    weights BLOB NOT NULL,
    momentum BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    plan TEXT,
    n_survivors INTEGER,
    sample_rate REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    device_id INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (device_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces(expires_at);
CREATE TABLE IF NOT EXISTS control_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    before_round INTEGER NOT NULL
);
"""

#: prune expired nonces after this many insertions
_NONCE_PRUNE_EVERY = 2048


class StoreError(RuntimeError):
    """The database does not match what this server expects (e.g. another task's model)."""


@dataclass(frozen=True)
class NonceVerdict:
    """What :meth:`Store.record_nonce` did: ``"stored"``, ``"replay"`` or ``"quota"``.

    For ``"quota"``, ``retry_after`` is the number of seconds until the device's oldest
    remembered nonce expires (and a slot frees up).
    """

    outcome: str
    retry_after: float = 0.0


@dataclass(frozen=True)
class StoredModel:
    version: int
    round: int | None
    weights: np.ndarray  # float32, flat
    momentum: np.ndarray | None


class Store:
    """SQLite store; safe to call from the event loop and worker threads (one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"database folder does not exist: {str(self.path.parent)!r}")
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open database {str(self.path)!r}: {err}") from err
        self._nonce_inserts = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # -- devices ------------------------------------------------------------------------
    def register_device(self, public_key: bytes) -> tuple[int, bool]:
        """Return ``(device_id, created)``; the same key again gives the same id."""
        with self._tx() as c:
            row = c.execute("SELECT id FROM devices WHERE public_key = ?", (public_key,)).fetchone()
            if row is not None:
                return int(row[0]) - 1, False
            cur = c.execute(
                "INSERT INTO devices(public_key, registered_at) VALUES (?, ?)",
                (public_key, time.time()),
            )
            # ids start at 0 (secagg client ids are >= 0); SQLite rowids start at 1
            return int(cur.lastrowid or 0) - 1, True

    def register_devices(self, public_keys: list[bytes]) -> list[int]:
        """Register many keys in one transaction (simulations with thousands of devices);
        their ids, in order. Keys already registered keep their ids."""
        ids: list[int] = []
        now = time.time()
        with self._tx() as c:
            for key in public_keys:
                row = c.execute("SELECT id FROM devices WHERE public_key = ?", (key,)).fetchone()
                if row is None:
                    cur = c.execute(
                        "INSERT INTO devices(public_key, registered_at) VALUES (?, ?)", (key, now)
                    )
                    ids.append(int(cur.lastrowid or 0) - 1)
                else:
                    ids.append(int(row[0]) - 1)
        return ids

    def device_key(self, device_id: int) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT public_key FROM devices WHERE id = ?", (device_id + 1,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def device_keys(self) -> dict[int, bytes]:
        with self._lock:
            rows = self._conn.execute("SELECT id, public_key FROM devices ORDER BY id").fetchall()
        return {int(i) - 1: bytes(k) for i, k in rows}

    def device_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])

    # -- request nonces -----------------------------------------------------------------
    def nonce_seen(self, device_id: int, nonce: str, now: float) -> bool:
        """Whether ``(device_id, nonce)`` is remembered and not yet expired."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM nonces WHERE device_id = ? AND nonce = ? AND expires_at >= ?",
                (device_id, nonce, now),
            ).fetchone()
        return row is not None

    def record_nonce(
        self, device_id: int, nonce: str, expires_at: float, now: float, quota: int
    ) -> NonceVerdict:
        """Remember a request nonce until ``expires_at``, at most ``quota`` per device.

        The quota is per device, so one device that sends (or has sent in its name, with
        its key) too many requests only ever refuses its own: others keep authenticating.
        Expired rows do not count and are deleted every few thousand insertions.
        """
        with self._tx() as c:
            row = c.execute(
                "SELECT expires_at FROM nonces WHERE device_id = ? AND nonce = ?",
                (device_id, nonce),
            ).fetchone()
            if row is not None and float(row[0]) >= now:
                return NonceVerdict("replay")
            n, oldest = c.execute(
                "SELECT COUNT(*), MIN(expires_at) FROM nonces "
                "WHERE device_id = ? AND expires_at >= ?",
                (device_id, now),
            ).fetchone()
            if int(n) >= quota:
                return NonceVerdict("quota", max(0.0, float(oldest) - now))
            c.execute(
                "INSERT OR REPLACE INTO nonces(device_id, nonce, expires_at) VALUES (?, ?, ?)",
                (device_id, nonce, float(expires_at)),
            )
            self._nonce_inserts += 1
            if self._nonce_inserts % _NONCE_PRUNE_EVERY == 0:
                c.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
        return NonceVerdict("stored")

    def prune_nonces(self, now: float) -> int:
        """Delete every nonce that expired before ``now``; return how many."""
        with self._tx() as c:
            cur = c.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
        return int(cur.rowcount)

    def nonce_count(self, device_id: int | None = None) -> int:
        """Remembered nonces (of one device, or of all), expired ones included."""
        with self._lock:
            if device_id is None:
                row = self._conn.execute("SELECT COUNT(*) FROM nonces").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM nonces WHERE device_id = ?", (device_id,)
                ).fetchone()
        return int(row[0])

    # -- models -------------------------------------------------------------------------
    def save_model(
        self,
        version: int,
        weights: np.ndarray,
        momentum: np.ndarray | None = None,
        round_id: int | None = None,
    ) -> None:
        w = np.ascontiguousarray(weights, dtype="<f4").tobytes()
        m = None if momentum is None else np.ascontiguousarray(momentum, dtype="<f4").tobytes()
        with self._tx() as c:
            c.execute(
                "INSERT INTO models(version, round, weights, momentum, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, round_id, w, m, time.time()),
            )

    def latest_model(self) -> StoredModel | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT version, round, weights, momentum FROM models ORDER BY version DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        version, rnd, w, m = row
        weights = np.frombuffer(bytes(w), dtype="<f4").copy()
        momentum = None if m is None else np.frombuffer(bytes(m), dtype="<f4").copy()
        return StoredModel(int(version), None if rnd is None else int(rnd), weights, momentum)

    def model_versions(self) -> list[int]:
        with self._lock:
            rows = self._conn.execute("SELECT version FROM models ORDER BY version").fetchall()
        return [int(r[0]) for r in rows]

    # -- rounds -------------------------------------------------------------------------
    def put_round(
        self,
        record: dict[str, Any],
        plan: dict[str, Any] | None = None,
        n_survivors: int | None = None,
        sample_rate: float | None = None,
    ) -> None:
        """Insert or replace the log entry of ``record["round"]``."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO rounds(round, status, record, plan, n_survivors, sample_rate) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(round) DO UPDATE SET "
                "status = excluded.status, record = excluded.record, "
                # a charged round stays charged: its plan is never erased by a later write
                "plan = COALESCE(excluded.plan, rounds.plan), "
                "n_survivors = COALESCE(excluded.n_survivors, rounds.n_survivors), "
                "sample_rate = COALESCE(excluded.sample_rate, rounds.sample_rate)",
                (
                    int(record["round"]),
                    str(record["status"]),
                    json.dumps(record),
                    None if plan is None else json.dumps(plan),
                    n_survivors,
                    sample_rate,
                ),
            )

    def finish_round_with_model(
        self,
        record: dict[str, Any],
        plan: dict[str, Any],
        n_survivors: int,
        sample_rate: float,
        version: int,
        weights: np.ndarray,
        momentum: np.ndarray | None,
    ) -> None:
        """Atomically store a finished round and the model it produced."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                w = np.ascontiguousarray(weights, dtype="<f4").tobytes()
                m = (
                    None
                    if momentum is None
                    else np.ascontiguousarray(momentum, dtype="<f4").tobytes()
                )
                self._conn.execute(
                    "INSERT INTO models(version, round, weights, momentum, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (version, int(record["round"]), w, m, time.time()),
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO rounds(round, status, record, plan, n_survivors, "
                    "sample_rate) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        int(record["round"]),
                        str(record["status"]),
                        json.dumps(record),
                        json.dumps(plan),
                        n_survivors,
                        sample_rate,
                    ),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def rounds(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT record FROM rounds ORDER BY round").fetchall()
        out = [json.loads(r[0]) for r in rows]
        return out[-limit:] if limit else out

    def charge_round(
        self, round_id: int, plan: dict[str, Any], n_survivors: int, sample_rate: float
    ) -> None:
        """Write-ahead privacy charge: record what round ``round_id`` releases *before* its
        sum is unmasked. From here on the round counts in :meth:`privacy_events`, whether
        it finishes or the server dies (issue 12: a seen sum is never left uncharged)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE rounds SET status = 'unmasking', plan = ?, n_survivors = ?, "
                "sample_rate = ? WHERE round = ? AND status = 'running'",
                (json.dumps(plan), int(n_survivors), float(sample_rate), int(round_id)),
            )
            if cur.rowcount != 1:
                raise StoreError(f"round {round_id} is not running: cannot charge it")

    def is_charged(self, round_id: int) -> bool:
        """Whether round ``round_id`` carries a privacy charge (see :meth:`charge_round`)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT plan IS NOT NULL AND n_survivors IS NOT NULL FROM rounds WHERE round = ?",
                (int(round_id),),
            ).fetchone()
        return bool(row and row[0])

    def privacy_events(self) -> list[tuple[dict[str, Any], int, float]]:
        """(plan dict, n_survivors, sample rate) of every charged round, in order: the
        finished ones and those a crash interrupted after the write-ahead charge."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT plan, n_survivors, sample_rate FROM rounds "
                "WHERE plan IS NOT NULL AND n_survivors IS NOT NULL "
                "AND status IN ('done', 'unmasking', 'aborted') ORDER BY round"
            ).fetchall()
        return [(json.loads(p), int(n), float(q)) for p, n, q in rows]

    def privacy_ledger(self) -> list[tuple[dict[str, Any], int, float, int, int | None]]:
        """Like :meth:`privacy_events`, with each round's cohort size (the number of
        devices sampled, which the amplified figure is conditioned on) and the population
        the accountant charged it against (None in records from before it was kept)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT plan, n_survivors, sample_rate, record FROM rounds "
                "WHERE plan IS NOT NULL AND n_survivors IS NOT NULL "
                "AND status IN ('done', 'unmasking', 'aborted') ORDER BY round"
            ).fetchall()
        out = []
        for p, n, q, rec in rows:
            record = json.loads(rec)
            # the cohort the round was charged with: larger than the number sampled when
            # devices were disabled (see ServerCore.begin_round), so replay that figure
            charged = record.get("charged_cohort")
            sampled = record.get("sampled")
            if isinstance(charged, int) and not isinstance(charged, bool):
                cohort = charged
            else:
                cohort = len(sampled) if isinstance(sampled, list) else int(sampled)
            pop = record.get("charged_population")
            population = pop if isinstance(pop, int) and not isinstance(pop, bool) else None
            out.append((json.loads(p), int(n), float(q), cohort, population))
        return out

    # -- operator change log ------------------------------------------------------------
    def log_control(self, action: str, detail: dict[str, Any], before_round: int) -> dict[str, Any]:
        """Append an operator change; ``before_round`` is the first round it can affect.
        Returns the entry as :meth:`control_log` gives it."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO control_log(at, action, detail, before_round) VALUES (?, ?, ?, ?)",
                (now, str(action), json.dumps(detail), int(before_round)),
            )
        return {"id": int(cur.lastrowid or 0), "at": now, "action": str(action),
                "detail": dict(detail), "before_round": int(before_round)}

    def control_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Operator changes, oldest first (the last ``limit`` if given)."""
        with self._lock:
            if limit:
                rows = self._conn.execute(
                    "SELECT id, at, action, detail, before_round FROM control_log "
                    "ORDER BY id DESC LIMIT ?", (int(limit),)
                ).fetchall()[::-1]
            else:
                rows = self._conn.execute(
                    "SELECT id, at, action, detail, before_round FROM control_log ORDER BY id"
                ).fetchall()
        return [
            {"id": int(i), "at": float(at), "action": str(a), "detail": json.loads(d),
             "before_round": int(b)}
            for i, at, a, d, b in rows
        ]

    def next_round_id(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def abort_running(self, reason: str) -> list[int]:
        """Mark every round still 'running' (a crash left it) as aborted; return their ids."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT round, record, plan FROM rounds WHERE status IN ('running', 'unmasking')"
            ).fetchall()
            ids = []
            for rnd, rec, plan in rows:
                record = json.loads(rec)
                record["status"] = "aborted"
                record["abort_reason"] = reason
                # charged before the crash (the sum may have been seen): stays charged
                record["charged"] = plan is not None
                record["finished_at"] = record.get("finished_at") or time.time()
                c.execute(
                    "UPDATE rounds SET status = 'aborted', record = ? WHERE round = ?",
                    (json.dumps(record), rnd),
                )
                ids.append(int(rnd))
        return ids
