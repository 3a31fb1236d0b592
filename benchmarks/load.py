"""Server load, memory and crash benchmark: protocol-only devices against one uvicorn server.

What it measures (issue 11, "Prove it at scale"):

- **load**: n devices (no TensorFlow: ``secagg.ClientProtocol`` + the HTTP API, httpx async,
  one asyncio loop per device process) run full secure-aggregation rounds against one
  ``uvicorn`` server process at model dimension d. Reported per n: the round time the
  server logged (``finished_at - started_at`` of the round), the server process's resident
  memory just before the round and its peak during the round (``VmRSS`` of
  ``/proc/<pid>/status`` sampled every 20 ms, plus the kernel's ``VmHWM``). The claim
  under test is that the server's memory grows with d, not with n * d: it keeps one
  running sum and reads only a few masked inputs at a time (``server.limits``).
- **crash** (``--crash``): the server is killed with SIGKILL in the middle of a round, at
  a chosen stage, and restarted on the same database. Reported: the round log and ε
  before the kill and after the restart, what became of the round in flight (aborted,
  or charged when its sum may have been unmasked), and whether the devices reconnected
  and training finished.

The devices send uniformly random vectors mod 2^b (the server cannot tell; decoding turns
them into a meaningless model, which is fine for a load test). Every loop is bounded in
count and time, and everything runs on the loopback interface.

The model is a task registered here, ``wide``: linear regression on d - 1 generated
features (d parameters), so that d can be set freely (1e5 by default).

Usage::

    python -m benchmarks.load --sizes 100,500,1000 --dim 100000
    python -m benchmarks.load --crash --sizes 100 --kill-at unmask
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROTOCOL_STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


# ---------------------------------------------------------------- the server side
def register_wide_task(dim: int) -> str:
    """Register ``wide``: y = w.x + b on ``dim - 1`` generated features (``dim`` weights)."""
    from clients.tasks.base import Dataset
    from clients.tasks.linreg import LinRegTask
    from clients.tasks.registry import TASKS, register_task

    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")

    class WideTask(LinRegTask):
        name = "wide"
        input_shape = (dim - 1,)
        description = f"linear regression on {dim - 1} generated features (load benchmark)"

        def load_data(self, data_dir: Path | str | None = None) -> Dataset:
            rng = np.random.default_rng(7)
            x = rng.uniform(0.0, 1.0, size=(48, dim - 1)).astype(np.float32)
            w = rng.normal(0.0, 1.0 / np.sqrt(dim), size=dim - 1)
            y = (x @ w).astype(np.float32)
            return Dataset(x[:16], y[:16], x[16:], y[16:])

    if "wide" in TASKS and TASKS["wide"].input_shape == (dim - 1,):
        return "wide"
    register_task(WideTask(), replace=True)
    return "wide"


def experiment_dict(n: int, dim: int, rounds: int, stage_timeout: float) -> dict[str, Any]:
    """The experiment every load run uses: all n devices sampled, Harary graph, 20 bits,
    at least 80 % of the cohort must contribute for a round to be unmasked."""
    from server.config import ServerConfig

    server: dict[str, Any] = {
        "rounds": rounds,
        "clients": n,
        "per_round": n,
        "stage_timeout": stage_timeout,
        "registration_timeout": 600.0,
        "rate_limit_per_s": 50.0,
        "rate_limit_burst": 200,
        "max_consecutive_aborts": 3,
    }
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    if "sampling" in names:
        server["sampling"] = "fixed"  # every device in every round: a known load
    return {
        "server": server,
        # noise shares sized for >= 80 % contributors: with 10 % corrupt devices, t alone
        # (about 5 % of n on a Harary graph) guarantees no honest noise at all
        "protocol": {"graph": "harary", "dropout": 0.1, "corrupt": 0.1, "min_survivors": 0.8},
        "dp": {"mechanism": "ddgauss", "clip": 1.0, "noise_multiplier": 1.0, "bits": 20},
        "training": {"task": "wide"},
    }


def serve(args: argparse.Namespace) -> int:
    """``python -m benchmarks.load serve``: one uvicorn server for the ``wide`` task."""
    import logging

    import uvicorn

    from server.app import create_app
    from server.config import AppSettings, ExperimentConfig

    register_wide_task(args.dim)
    cfg = ExperimentConfig.from_dict(
        experiment_dict(args.clients, args.dim, args.rounds, args.stage_timeout)
    )
    settings = AppSettings(
        experiment=cfg, db_path=Path(args.db), log_file=Path(args.db).with_suffix(".log")
    )
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        timeout_keep_alive=60,
        backlog=4096,
    )
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m benchmarks.load serve`` in a child process, with its memory sampled."""

    def __init__(self, workdir: Path, n: int, dim: int, rounds: int, stage_timeout: float):
        self.workdir = workdir
        self.port = _free_port()
        self.args = [
            sys.executable, "-m", "benchmarks.load", "serve",
            "--port", str(self.port), "--db", str(workdir / "server.sqlite3"),
            "--clients", str(n), "--dim", str(dim), "--rounds", str(rounds),
            "--stage-timeout", str(stage_timeout),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        import httpx

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        out = open(self.workdir / "server.out", "ab")  # noqa: SIM115 - child keeps it
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=out, stderr=out)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                tail = (self.workdir / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}: {tail}")
            try:
                if httpx.get(f"{self.url}/v1/status", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # a child binding its port: nothing to wait on but time
        else:
            raise RuntimeError("server did not start in time")
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self.rss()
            if rss is not None:
                self.samples.append((time.time(), rss))
            self._stop.wait(0.02)

    def _status_kb(self, field: str) -> int | None:
        if self.proc is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return None

    def rss(self) -> int | None:
        return self._status_kb("VmRSS")

    def hwm(self) -> int | None:
        return self._status_kb("VmHWM")

    def peak_between(self, t0: float, t1: float) -> int | None:
        vals = [r for t, r in self.samples if t0 <= t <= t1]
        return max(vals) if vals else None

    def kill(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------- the devices
class Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


@dataclasses.dataclass
class Tally:
    """What the devices of one process saw (merged over processes by the parent)."""

    rounds_completed: int = 0
    rounds_lost: int = 0
    reconnects: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    finished: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


class LoadDevice:
    """One protocol-only device: long-polls, and in each round it is sampled in, runs the
    five stages with ``secagg.ClientProtocol`` on a random input. Survives a server
    restart: transport errors and 5xx are retried with backoff for ``reconnect_s``."""

    def __init__(
        self, http: Any, base_url: str, tally: Tally, fetch_model: bool, reconnect_s: float
    ) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.http = http
        self.base_url = base_url
        self.key = Ed25519PrivateKey.generate()
        self.device_id = -1
        self.tally = tally
        self.fetch_model = fetch_model
        self.reconnect_s = reconnect_s

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        ctype: str | None = None,
        signed: bool = True,
        timeout: float = 60.0,
    ) -> Any:
        import httpx

        from benchmarks.fuzz import sign

        end = time.monotonic() + self.reconnect_s
        delay = 0.2
        while True:
            headers = {"Content-Type": ctype} if ctype else {}
            if signed:
                headers.update(sign(self.key, self.device_id, method, path, body, self.base_url))
            try:
                resp = await self.http.request(
                    method, path, content=body or None, headers=headers, timeout=timeout
                )
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code < 400:
                return resp
            status = 0 if resp is None else resp.status_code
            retry = status in (0, 401, 429, 500, 502, 503)
            if not retry or time.monotonic() + delay > end:
                detail = "no connection" if resp is None else resp.text[:200]
                raise Rejected(status, detail)
            if status == 0:
                self.tally.reconnects += 1
            if status == 429 and resp is not None:
                delay = min(5.0, float(resp.headers.get("Retry-After", "1")))
            await asyncio.sleep(delay)  # backoff before a retry (bounded by reconnect_s)
            delay = min(5.0, delay * 2)

    async def register(self) -> None:
        from secagg.auth import public_key_bytes

        pk = base64.b64encode(public_key_bytes(self.key)).decode()
        body = json.dumps({"public_key": pk}).encode()
        resp = await self.request("POST", "/v1/devices", body, "application/json", signed=False)
        self.device_id = int(resp.json()["device_id"])

    async def run(self, deadline: float) -> None:
        """Take part in rounds until the server says "finished" or ``deadline`` passes."""
        version, skip, session = -1, None, None
        while time.monotonic() < deadline:
            wait = max(0.0, min(25.0, deadline - time.monotonic()))
            q = f"wait={wait:.0f}&after={version}" + (f"&skip_round={skip}" if skip else "")
            try:
                state = await self.request("GET", f"/v1/rounds/current?{q}", timeout=wait + 60)
                state = state.json()
            except Rejected as err:
                self._count(f"poll {err.status}")
                return
            version = int(state["version"])
            stage, rid = state["stage"], state["round"]
            if session is not None and (session["round"] != rid or stage == "finished"):
                self._end(session)
                session = None
            if stage == "finished":
                self.tally.finished += 1
                return
            in_round = stage in PROTOCOL_STAGES and isinstance(rid, int)
            skip = rid if in_round and not state["sampled"] else None
            if not in_round or not state["sampled"]:
                continue
            if session is None:
                if stage != "advertise_keys":
                    continue  # joined late: sit this round out
                session = {"round": rid, "state": state, "done": set(), "lost": False}
            if session["lost"] or stage in session["done"]:
                continue
            try:
                await self.step(session, stage)
                session["done"].add(stage)
            except Rejected as err:
                self._count(f"{stage} {err.status}")
                session["lost"] = True
        if session is not None:
            self._end(session)
        self._count("deadline")

    def _count(self, what: str) -> None:
        self.tally.rejected[what] = self.tally.rejected.get(what, 0) + 1

    def _end(self, session: dict[str, Any]) -> None:
        if "unmask" in session["done"]:
            self.tally.rounds_completed += 1
        else:
            self.tally.rounds_lost += 1

    async def step(self, session: dict[str, Any], stage: str) -> None:
        from secagg import AdvertiseKeys, ClientProtocol, RoundParams, UnmaskRequest

        rid = session["round"]
        base = f"/v1/rounds/{rid}"
        if stage == "advertise_keys":
            params = RoundParams.from_dict(session["state"]["params"])
            session["proto"] = ClientProtocol(params, self.device_id)
            session["params"] = params
            if self.fetch_model:
                await self.request("GET", "/v1/model", signed=False)
            msg = session["proto"].advertise_keys().to_dict()
            await self.request("POST", f"{base}/keys", _j(msg), "application/json")
        elif stage == "share_keys":
            got = (await self.request("GET", f"{base}/keys")).json()["keys"]
            keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in got.items()}
            msg = session["proto"].share_keys(keys).to_dict()
            await self.request("POST", f"{base}/shares", _j(msg), "application/json")
        elif stage == "masked_input":
            got = (await self.request("GET", f"{base}/shares")).json()["ciphertexts"]
            cts = {int(k): base64.b64decode(v) for k, v in got.items()}
            p = session["params"]
            x = np.random.default_rng().integers(0, 2**p.bits, size=p.dim, dtype=np.uint64)
            data = session["proto"].masked_input(cts, x).data
            del x
            await self.request("POST", f"{base}/masked-input", data, "application/octet-stream")
        elif stage == "unmask":
            req = UnmaskRequest.from_dict((await self.request("GET", f"{base}/unmask")).json())
            msg = session["proto"].unmask(req).to_dict()
            await self.request("POST", f"{base}/unmask", _j(msg), "application/json")
        elif stage == "consistency_check":
            req = UnmaskRequest.from_dict((await self.request("GET", f"{base}/consistency")).json())
            msg = session["proto"].consistency_check(req).to_dict()
            await self.request("POST", f"{base}/consistency", _j(msg), "application/json")


def _j(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def run_devices(
    base_url: str, n: int, run_s: float, fetch_model: bool, reconnect_s: float
) -> Tally:
    """Register ``n`` devices, then run them all until training finishes or ``run_s``."""
    import httpx

    tally = Tally()
    # one small client per device: a single pool of n connections costs O(n) per request
    # in httpcore (it scans the pool), which made the devices, not the server, the limit
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=httpx.Limits(max_connections=4))
        for _ in range(n)
    ]
    try:
        devices = [LoadDevice(http, base_url, tally, fetch_model, reconnect_s) for http in clients]
        for i in range(0, n, 50):  # registration is rate limited per address: batches
            await asyncio.gather(*(d.register() for d in devices[i : i + 50]))
        deadline = time.monotonic() + run_s
        results = await asyncio.gather(*(d.run(deadline) for d in devices), return_exceptions=True)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            tally.errors.append(f"{type(r).__name__}: {r}"[:300])
    return tally


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


# ---------------------------------------------------------------- one measured run
def _get_json(url: str, path: str) -> Any:
    import httpx

    for _ in range(30):
        try:
            return httpx.get(url + path, timeout=30).json()
        except httpx.HTTPError:
            time.sleep(1.0)  # the server is restarting; bounded (30 tries)
    raise RuntimeError(f"cannot read {path}")


def measure(n: int, dim: int, rounds: int, stage_timeout: float, fetch_model: bool) -> dict:
    """One server, ``n`` devices, ``rounds`` rounds at dimension ``dim``: times and memory."""
    _raise_fd_limit(4 * n + 256)
    with tempfile.TemporaryDirectory(prefix="secagg-load-") as tmp:
        server = ServerProcess(Path(tmp), n, dim, rounds, stage_timeout)
        server.start()
        try:
            rss_idle = server.rss()
            load_before = os.getloadavg()[0]
            t0 = time.time()
            run_s = 60.0 + rounds * (5 * stage_timeout + 60.0)
            tally = asyncio.run(run_devices(server.url, n, run_s, fetch_model, 30.0))
            t1 = time.time()
            log = _get_json(server.url, "/v1/rounds")
            status = _get_json(server.url, "/v1/status")
            hwm = server.hwm()
            load_after = os.getloadavg()[0]
        finally:
            server.stop()
        per_round = []
        for rec in log:
            if rec.get("started_at") is None:
                continue
            start, end = float(rec["started_at"]), float(rec.get("finished_at") or t1)
            base = server.peak_between(start - 1.0, start)  # resident just before the round
            per_round.append(
                {
                    "round": rec["round"],
                    "status": rec["status"],
                    "sampled": rec.get("sampled"),
                    "survivors": rec.get("survivors"),
                    "round_s": round(end - start, 3),
                    "timings": rec.get("timings"),
                    "rss_before_mib": _mib(base),
                    "rss_peak_mib": _mib(server.peak_between(start, end)),
                    "rss_peak_by_stage_mib": _by_stage(server, start, rec.get("timings") or {}),
                }
            )
    return {
        "n": n,
        "dim": dim,
        "rounds_planned": rounds,
        "rounds_done": status.get("rounds_done"),
        "training_done": status.get("training_done"),
        "finished_reason": status.get("finished_reason"),
        "wall_s": round(t1 - t0, 1),
        "load_avg_1min": [round(load_before, 1), round(load_after, 1)],
        "rss_idle_mib": _mib(rss_idle),
        "rss_peak_run_mib": _mib(server.peak_between(t0, t1)),
        "vm_hwm_mib": _mib(hwm),
        "devices": dataclasses.asdict(tally),
        "rounds": per_round,
    }


def _by_stage(server: ServerProcess, start: float, timings: Mapping[str, Any]) -> dict:
    """Peak RSS inside each protocol stage (windows from the round's logged durations)."""
    out, t = {}, start
    for stage in PROTOCOL_STAGES:
        if stage in timings:
            out[stage] = _mib(server.peak_between(t, t + float(timings[stage])))
            t += float(timings[stage])
    return out


def _mib(x: int | None) -> float | None:
    return None if x is None else round(x / 2**20, 1)


# ---------------------------------------------------------------- crash
KILL_POINTS = (*PROTOCOL_STAGES, "unmasking")


def _wait_unmasking(db: Path, rid: int, limit_s: float) -> str | None:
    """Poll the server's SQLite file (a reader beside the server, WAL mode) until round
    ``rid`` is charged ("unmasking": written ahead of the unmasking) or over.

    The database, not the HTTP API, because the window between the charge and the round
    log is about the reconstruction time, during which the server may not answer."""
    import sqlite3

    end = time.monotonic() + limit_s
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        while time.monotonic() < end:
            try:
                row = conn.execute("SELECT status FROM rounds WHERE round = ?", (rid,)).fetchone()
            except sqlite3.OperationalError:  # busy: try again
                row = ("running",)
            if row is not None and row[0] != "running":
                return str(row[0])
            time.sleep(0.002)  # a short window: poll the file often (bounded by limit_s)
    finally:
        conn.close()
    return None


def crash(n: int, dim: int, rounds: int, stage_timeout: float, kill_at: str) -> dict:
    """Kill -9 the server when round 1 reaches ``kill_at``, restart it, let training end.

    ``kill_at`` is a protocol stage (killed 0.3 s after the stage opened, messages half
    in) or ``"unmasking"``: killed as soon as the database shows round 1 charged (written
    ahead, before its sum is unmasked) and not yet done."""
    import httpx

    _raise_fd_limit(4 * n + 256)
    out: dict[str, Any] = {"n": n, "dim": dim, "rounds_planned": rounds, "kill_at": kill_at}
    with tempfile.TemporaryDirectory(prefix="secagg-crash-") as tmp:
        server = ServerProcess(Path(tmp), n, dim, rounds, stage_timeout)
        server.start()
        tally_box: list[Tally] = []
        run_s = 120.0 + (rounds + 1) * (5 * stage_timeout + 60.0)

        def devices() -> None:
            tally_box.append(asyncio.run(run_devices(server.url, n, run_s, False, 180.0)))

        th = threading.Thread(target=devices, daemon=True)
        th.start()
        version, killed = -1, None
        stage = "unmask" if kill_at == "unmasking" else kill_at
        end = time.monotonic() + run_s
        while time.monotonic() < end and killed is None:
            try:
                st = httpx.get(
                    f"{server.url}/v1/rounds/current?wait=10&after={version}", timeout=30
                ).json()
            except httpx.HTTPError:
                continue
            version = st["version"]
            if st["stage"] == "finished":
                break
            if st["round"] != 1 or st["stage"] != stage:
                continue
            if kill_at == "unmasking":
                seen = _wait_unmasking(Path(tmp) / "server.sqlite3", 1, 5 * stage_timeout)
                out["status_seen_at_kill"] = seen
            else:
                time.sleep(0.3)  # let part of the stage's messages in
            server.kill()
            killed = time.time()
            out["killed_in"] = {"round": 1, "stage": kill_at}
        if killed is None:
            server.stop()
            out["error"] = "round 1 never reached the point to kill at"
            return out
        db = Path(tmp) / "server.sqlite3"
        out["before_restart"] = _db_rounds(db)
        time.sleep(1.0)
        server.start()
        out["restart_s"] = round(time.time() - killed, 1)
        log = _get_json(server.url, "/v1/rounds")
        out["after_restart"] = _summary({"log": log, "status": _get_json(server.url, "/v1/status")})
        th.join(run_s)
        final = {
            "log": _get_json(server.url, "/v1/rounds"),
            "status": _get_json(server.url, "/v1/status"),
        }
        server.stop()
        out["final"] = _summary(final)
        out["devices"] = dataclasses.asdict(tally_box[0]) if tally_box else None
    return out


def _db_rounds(db: Path) -> list[dict[str, Any]]:
    """The round table as the killed server left it on disk (status, and whether charged)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT round, status, plan IS NOT NULL, n_survivors FROM rounds ORDER BY round"
        ).fetchall()
    return [
        {"round": r, "status": s, "charge_written": bool(p), "n_survivors": m}
        for r, s, p, m in rows
    ]


def _summary(snap: dict[str, Any]) -> dict[str, Any]:
    st = snap["status"]
    return {
        "rounds": [
            {k: r.get(k) for k in ("round", "status", "survivors", "epsilon", "abort_reason")}
            for r in snap["log"]
        ],
        "epsilon": st.get("epsilon"),
        "rounds_done": st.get("rounds_done"),
        "training_done": st.get("training_done"),
        "stage": st.get("stage"),
    }


# ---------------------------------------------------------------- reports
def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_load_report(results: list[dict[str, Any]], out: Path) -> None:
    data: dict[str, Any] = {"benchmark": "server_load", "machine": machine(), "runs": results}
    (out / "server_load.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Server load: protocol-only devices against one uvicorn server",
        "",
        "Produced by `python -m benchmarks.load` (see its docstring). Each device is a "
        "`secagg.ClientProtocol` over HTTP (httpx async, one process for all devices), "
        "sampled in every round, Harary graph, 20-bit modulus, random inputs. Server: "
        "one uvicorn process on the loopback interface; memory is its resident set "
        "(`VmRSS`, sampled every 20 ms).",
        "",
        f"Machine: {data['machine']['cpus']} CPUs, Python {data['machine']['python']}.",
        "",
        "| n | d | round | status | survivors | round time (s) | RSS before (MiB) "
        "| RSS peak (MiB) | peak − before (MiB) | n·d·4 bytes (MiB) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results:
        for r in run["rounds"]:
            grow = (
                None
                if r["rss_peak_mib"] is None or r["rss_before_mib"] is None
                else round(r["rss_peak_mib"] - r["rss_before_mib"], 1)
            )
            lines.append(
                f"| {run['n']} | {run['dim']} | {r['round']} | {r['status']} | "
                f"{r['survivors']} | {r['round_s']} | {r['rss_before_mib']} | "
                f"{r['rss_peak_mib']} | {grow} | {round(run['n'] * run['dim'] * 4 / 2**20, 1)} |"
            )
    lines += [
        "",
        "Peak RSS per stage (MiB): "
        + "; ".join(
            f"n = {run['n']}, d = {run['dim']}: {r['rss_peak_by_stage_mib']}"
            for run in results
            for r in run["rounds"]
        ),
        "",
        "Every device also downloads the model (`GET /v1/model`, 4·d bytes) each round, "
        "as a real device does.",
        "",
        "How to read it: the server keeps one running sum (the encoded length rounded up "
        "to a power of two, as uint64), adds at most 4 masked inputs at a time "
        "(`server.limits.UploadGate`) and streams the model in 64 KiB chunks, so the "
        "protocol state is O(d) plus O(n·k) small items (keys, share ciphertexts, nonces). "
        "What still grows with n in the masked-input stage is the ASGI server's buffer of "
        "each upload that has arrived but waits for a slot: uvicorn reads up to ~320 KiB "
        "of a body before pausing the connection, which at d = 1e5 and 20 bits (327,680 "
        "bytes per input) is nearly the whole input. That term is capped per connection, "
        "so it is O(n) for large d, but at this d it is comparable to n·d for the uploads "
        "in flight at once; bounding it needs devices that wait for a slot before sending "
        "(see `UploadGate`).",
    ]
    lines += ["", "Devices (per run):", ""]
    for run in results:
        dev = run["devices"]
        lines.append(
            f"- n = {run['n']}, d = {run['dim']}: {run['rounds_done']} of "
            f"{run['rounds_planned']} rounds done, wall {run['wall_s']} s (1-min load average "
            f"{run['load_avg_1min'][0]} -> {run['load_avg_1min'][1]} on this shared machine); "
            f"device rounds "
            f"completed {dev['rounds_completed']}, lost {dev['rounds_lost']}, refusals "
            f"{dev['rejected'] or 'none'}, errors {len(dev['errors'])}; server VmHWM "
            f"{run['vm_hwm_mib']} MiB (includes start-up)."
        )
    (out / "server_load.md").write_text("\n".join(lines) + "\n")


def write_crash_report(results: list[dict[str, Any]], out: Path) -> None:
    data: dict[str, Any] = {"benchmark": "server_crash", "machine": machine(), "runs": results}
    (out / "server_crash.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Server crash: kill -9 mid-round under load, then restart",
        "",
        "Produced by `python -m benchmarks.load --crash` (see `crash` in that module). The "
        "server is killed with SIGKILL during round 1, then restarted on the same database; "
        "the devices retry their requests (backoff, up to 180 s) and carry on.",
        "",
    ]
    for result in results:
        lines += [
            f"## Killed at `{result['kill_at']}` (n = {result['n']}, d = {result['dim']}, "
            f"{result['rounds_planned']} rounds planned)",
            "",
        ]
        if result.get("error"):
            lines += [f"Error: {result['error']}", ""]
            continue
        if "status_seen_at_kill" in result:
            lines.append(f"Round 1 status in the database at the kill: "
                         f"`{result['status_seen_at_kill']}`.")  # fmt: skip
        lines += ["", "On disk after the kill (before the restart):", "",
                  "| round | status | privacy charge written | survivors charged |",
                  "| ---: | --- | --- | ---: |"]  # fmt: skip
        for r in result["before_restart"]:
            lines.append(f"| {r['round']} | {r['status']} | {r['charge_written']} | "
                         f"{r['n_survivors']} |")  # fmt: skip
        for name in ("after_restart", "final"):
            snap = result[name]
            lines += [
                "",
                f"{name.replace('_', ' ').capitalize()}: ε = {snap['epsilon']}, rounds done "
                f"{snap['rounds_done']}, training done {snap['training_done']}.",
                "",
                "| round | status | survivors | ε after it | abort reason |",
                "| ---: | --- | ---: | ---: | --- |",
            ]
            for r in snap["rounds"]:
                lines.append(
                    f"| {r['round']} | {r['status']} | {r['survivors']} | {r['epsilon']} | "
                    f"{r.get('abort_reason') or ''} |"
                )
        dev = result.get("devices") or {}
        lines += [
            "",
            f"Devices: {dev.get('finished')} of {result['n']} saw training finish; rounds "
            f"completed {dev.get('rounds_completed')}, lost {dev.get('rounds_lost')}; "
            f"connection retries {dev.get('reconnects')}; refusals "
            f"{dev.get('rejected') or 'none'}. Restart took {result.get('restart_s')} s.",
            "",
        ]
    (out / "server_crash.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from benchmarks.cli import OneLineParser

    p = OneLineParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="load", choices=("load", "serve"))
    p.add_argument("--sizes", default="100,500,1000", help="device counts, comma-separated")
    p.add_argument("--dim", type=int, default=100_000, help="model dimension d")
    p.add_argument("--dims", default="", help="several d, comma-separated (overrides --dim)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--stage-timeout", type=float, default=120.0)
    p.add_argument("--no-model", action="store_true", help="devices skip GET /v1/model")
    p.add_argument("--crash", action="store_true", help="the kill -9 / restart run")
    p.add_argument(
        "--kill-at",
        default="unmasking,masked_input",
        help=f"comma-separated kill points for --crash, of {', '.join(KILL_POINTS)}",
    )
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    # serve mode
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--db", default="")
    p.add_argument("--clients", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "serve":
        return serve(args)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        dims = [int(s) for s in args.dims.split(",") if s.strip()] or [args.dim]
    except ValueError:
        print(f"python -m benchmarks.load: error: bad --sizes {args.sizes!r} or --dims "
              f"{args.dims!r}", file=sys.stderr)  # fmt: skip
        return 2
    if not sizes or min(sizes) < 3 or min(dims) < 2 or args.rounds < 1:
        print("python -m benchmarks.load: error: need sizes >= 3, dim >= 2, rounds >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.crash:
        points = [k.strip() for k in args.kill_at.split(",") if k.strip()]
        if not points or any(k not in KILL_POINTS for k in points):
            print(f"python -m benchmarks.load: error: --kill-at {args.kill_at!r}: choose from "
                  f"{', '.join(KILL_POINTS)}", file=sys.stderr)  # fmt: skip
            return 2
        crashes = [
            crash(sizes[0], dims[0], max(3, args.rounds), args.stage_timeout, k) for k in points
        ]
        write_crash_report(crashes, out)
        print(json.dumps(crashes, indent=2))
        return 0
    results = []
    for n, dim in [(n, d) for d in dims for n in sizes]:
        res = measure(n, dim, args.rounds, args.stage_timeout, not args.no_model)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "devices"}, indent=1), flush=True)
        write_load_report(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
