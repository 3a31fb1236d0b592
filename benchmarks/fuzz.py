"""Schema fuzzing of the HTTP API (schemathesis) while honest devices run rounds.

The claim under test (issue 11, "Prove it at scale"): whatever a client sends, on any route,
signed or not, the server answers with a status below 500, and a round that honest
devices run at the same time loses nothing: every honest device sampled in the round is
a survivor and the unmasked sum equals the sum of their inputs exactly.

How:

- :func:`generate_cases` draws requests from the server's own OpenAPI schema with
  schemathesis, positive (schema-valid) and negative (schema-violating) cases for every
  operation, seeded and reproducible.
- :class:`Fuzzer` sends each case with one of five authentication modes, drawn at random:
  ``none`` (as generated), ``signed`` (a valid signature of a registered fuzz identity),
  ``forged`` (another identity's key, a tampered signature or a stale timestamp),
  ``unknown`` (a device id nobody registered) and ``replay`` (a signed request sent twice).
  Two changes to the generated cases keep them useful: a path's round id is replaced, most
  of the time, by the round in flight (random ids only ever reach "unknown round"), and the
  long-poll ``wait`` is capped at 0.3 s (a 60 s wait would measure the clock, not the
  server). Every response with status >= 500 is a failure and is kept with its request.
- :class:`HonestRounds` runs complete rounds with honest ``secagg.ClientProtocol`` devices
  over the same HTTP server, and :func:`record_sums` records every sum the server unmasks,
  so the two can be compared exactly.

``python -m benchmarks.fuzz`` runs it against a real uvicorn server on the loopback
interface (in this process, so the unmasked sums can be recorded) with fuzz threads and a
thread of honest devices, and writes ``benchmarks/results/fuzz.{md,json}``. A short run of
the same machinery is in ``tests/server/test_fuzz_schema.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
AUTH_MODES = ("none", "signed", "forged", "unknown", "replay")
AUTH_WEIGHTS = (0.35, 0.35, 0.12, 0.08, 0.10)
MAX_POLL_WAIT = "0.3"


# ---------------------------------------------------------------- signing
def sign(key: Any, device_id: int, method: str, path: str, body: bytes, audience: str) -> dict:
    """Signed-request headers (``secagg.auth``) for the server at ``audience``."""
    from secagg.auth import sign_request

    return dict(sign_request(key, device_id, method, path, body, audience=audience))


@dataclasses.dataclass
class Identity:
    """A device key; ``device_id`` once registered."""

    key: Any
    device_id: int = -1

    @classmethod
    def new(cls) -> Identity:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def register(self, http: httpx.Client) -> int:
        from secagg.auth import public_key_bytes

        pk = base64.b64encode(public_key_bytes(self.key)).decode()
        r = http.post("/v1/devices", json={"public_key": pk})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"registration failed: {r.status_code} {r.text[:200]}")
        self.device_id = int(r.json()["device_id"])
        return self.device_id


# ---------------------------------------------------------------- cases
def generate_cases(spec: dict[str, Any], per_operation: int, seed: int) -> dict[str, list[Any]]:
    """Up to ``per_operation`` schemathesis cases per operation, half positive, half
    negative (where the schema leaves anything to violate), reproducible from ``seed``.

    Operations whose input space is tiny (``GET /v1/status`` has no parameters) yield fewer
    distinct cases; :class:`Fuzzer` cycles through them."""
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from hypothesis import seed as hseed
    from hypothesis import settings as hsettings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(spec)
    out: dict[str, list[Any]] = {}
    from schemathesis.core.result import Ok

    for result in schema.get_all_operations():
        if not isinstance(result, Ok):  # an operation schemathesis cannot read
            raise ValueError(f"the OpenAPI schema has an unreadable operation: {result!r}")
        op = result.ok()
        cases: list[Any] = []
        for i, mode in enumerate((GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
            want = per_operation // 2 if i == 0 else per_operation - per_operation // 2
            collect = _collector(op.as_strategy(generation_mode=mode), cases)
            collect = hsettings(
                max_examples=want,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(collect)
            try:
                hseed(seed + i)(collect)()
            except Unsatisfiable:  # nothing in the schema to violate (no parameters)
                pass
        if cases:
            out[op.label] = cases
    return out


def _multipart(files: Any, data: Any) -> dict[str, Any]:
    """requests-style ``files`` (``(name, (filename, content[, type]))``; a None filename is
    a plain form field) as httpx ``files`` and ``data``, contents coerced to str/bytes."""
    fields: dict[str, Any] = dict(data) if isinstance(data, dict) else {}
    out: list[tuple[str, Any]] = []
    for name, spec in files:
        spec = spec if isinstance(spec, tuple) else (None, spec)
        filename, content = spec[0], spec[1]
        if not isinstance(content, bytes | str):
            content = json.dumps(content)
        if filename is None:
            fields[str(name)] = content if isinstance(content, str) else content.decode("latin-1")
        else:
            out.append((str(name), (str(filename), content, *spec[2:3])))
    return {"files": out or None, "data": fields or None}


def _collector(strategy: Any, sink: list[Any]) -> Callable[[], None]:
    """A hypothesis test that appends every case it is given to ``sink``."""
    from hypothesis import given

    @given(case=strategy)
    def collect(case: Any) -> None:
        sink.append(case)

    return collect  # type: ignore[no-any-return]


@dataclasses.dataclass
class Outcome:
    """One sent request: operation, auth mode, status (0: could not be sent)."""

    label: str
    auth: str
    status: int


class Fuzzer:
    """Sends generated cases through ``http`` with random authentication (module docstring).

    ``identities`` must be registered; ``current_round()`` gives the round in flight (or
    None). Thread-safe: each call of :meth:`send` uses only its own random draws."""

    def __init__(
        self,
        http: httpx.Client,
        identities: Sequence[Identity],
        current_round: Callable[[], int | None],
        seed: int,
        audience: str,
    ) -> None:
        self.http = http
        self.identities = list(identities)
        self.current_round = current_round
        self.audience = audience
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.failures: list[dict[str, Any]] = []

    def _draw(self) -> tuple[str, float, Identity, Identity]:
        with self._lock:
            mode = self._rng.choices(AUTH_MODES, AUTH_WEIGHTS)[0]
            return (
                mode,
                self._rng.random(),
                self._rng.choice(self.identities),
                self._rng.choice(self.identities),
            )

    def _request(self, case: Any, pick: float) -> httpx.Request:
        if "r" in (case.path_parameters or {}):
            rid = self.current_round()
            if rid is not None and pick < 0.7:
                case.path_parameters["r"] = rid if pick < 0.6 else rid + 1
        if case.operation.label == "GET /v1/rounds/current" and case.query:
            w = case.query.get("wait")
            try:
                if w is not None and float(w) > float(MAX_POLL_WAIT):
                    case.query["wait"] = MAX_POLL_WAIT
            except (TypeError, ValueError):
                pass  # not a number: the server answers 422 at once
        kw = case.as_transport_kwargs(base_url=str(self.http.base_url).rstrip("/"))
        body: dict[str, Any] = {}
        if "json" in kw:
            body["json"] = kw["json"]
        data = kw.get("data")
        if isinstance(data, bytes | str):
            body["content"] = data
        elif data is not None:
            body["data"] = data
        if kw.get("files"):
            body.update(_multipart(kw["files"], body.get("data")))
        return self.http.build_request(
            kw["method"],
            kw["url"],
            params=kw.get("params") or None,
            headers=kw.get("headers") or None,
            cookies=kw.get("cookies") or None,
            **body,
        )

    def send(self, case: Any) -> list[Outcome]:
        """Send ``case`` once (twice for ``replay``); record and return the outcomes."""
        mode, pick, me, other = self._draw()
        label = case.operation.label
        try:
            req = self._request(case, pick)
            req.read()
        except (ValueError, TypeError, UnicodeError, httpx.HTTPError) as err:
            # httpx refuses to put this on the wire (e.g. a newline in a header value)
            refused = [Outcome(label, mode, 0)]
            self._record(refused, None, f"unsendable: {type(err).__name__}")
            return refused
        if mode != "none":
            path = req.url.raw_path.decode("ascii")
            signer, claimed = me, me
            if mode == "forged":
                signer = other if other is not me else Identity.new()
            h = sign(signer.key, claimed.device_id, req.method, path, req.content, self.audience)
            if mode == "forged" and pick < 0.3:
                h["X-Timestamp"] = str(int(h["X-Timestamp"]) - 100_000)
            if mode == "forged" and pick > 0.7:
                sig = bytearray(base64.b64decode(h["X-Signature"]))
                sig[0] ^= 1
                h["X-Signature"] = base64.b64encode(bytes(sig)).decode()
            if mode == "unknown":
                h["X-Device-Id"] = str(10**9 + int(pick * 1000))
            req.headers.update(h)
        sends = 2 if mode == "replay" else 1
        out: list[Outcome] = []
        for _ in range(sends):
            try:
                resp = self.http.send(req)
                status = resp.status_code
                text = resp.text[:300] if status >= 500 else ""
            except httpx.LocalProtocolError as err:
                # the client refused to write it (e.g. a header value with a trailing space);
                # nothing reached the server
                out.append(Outcome(label, mode, 0))
                self._record(out[-1:], None, f"unsendable: {err}")
                return out
            except httpx.TransportError as err:
                status, text = 599, f"transport error: {type(err).__name__}: {err}"
            out.append(Outcome(label, mode, status))
            if status >= 500:
                self._record(out[-1:], req, text)
        with self._lock:
            self.outcomes.extend(out)
        return out

    def _record(self, outs: list[Outcome], req: httpx.Request | None, text: str) -> None:
        with self._lock:
            if req is None:
                self.outcomes.extend(outs)
                return
            self.failures.append(
                {
                    "label": outs[0].label,
                    "auth": outs[0].auth,
                    "status": outs[0].status,
                    "method": req.method,
                    "url": str(req.url)[:500],
                    "body_prefix": req.content[:200].decode("latin-1"),
                    "response": text,
                }
            )

    def summary(self) -> dict[str, Any]:
        by_route: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            c = by_route.setdefault(o.label, Counter())
            key = "unsendable" if o.status == 0 else str(o.status)
            c[key] += 1
            c[f"auth:{o.auth}"] += 1
        sent = sum(1 for o in self.outcomes if o.status != 0)
        return {
            "requests_sent": sent,
            "unsendable": len(self.outcomes) - sent,
            "server_errors": sum(1 for o in self.outcomes if o.status >= 500),
            "by_route": {k: dict(sorted(v.items())) for k, v in sorted(by_route.items())},
            "by_auth": dict(Counter(o.auth for o in self.outcomes if o.status != 0)),
            "failures": self.failures[:50],
        }


def interleave(cases: dict[str, list[Any]], total: int, seed: int) -> Iterator[Any]:
    """``total`` cases cycling over every operation in a seeded random order."""
    rng = random.Random(seed)
    labels = sorted(cases)
    pos = {k: 0 for k in labels}
    for i in range(total):
        if i % len(labels) == 0:
            rng.shuffle(labels)
        label = labels[i % len(labels)]
        lst = cases[label]
        yield lst[pos[label] % len(lst)]
        pos[label] += 1


# ---------------------------------------------------------------- exact sums
@contextmanager
def record_sums() -> Iterator[dict[int, tuple[frozenset[int], np.ndarray]]]:
    """Record every sum ``AggregatorProtocol.finish`` unmasks: round -> (survivors, sum)."""
    from secagg.aggregator import AggregatorProtocol

    seen: dict[int, tuple[frozenset[int], np.ndarray]] = {}
    original = AggregatorProtocol.finish

    def finish(self: Any) -> np.ndarray:
        total = original(self)
        seen[int(self.params.round_id)] = (frozenset(self.survivors), np.array(total))
        return total

    AggregatorProtocol.finish = finish  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        AggregatorProtocol.finish = original  # type: ignore[method-assign]


# ---------------------------------------------------------------- honest devices
class HonestRounds:
    """Honest devices that run complete rounds over HTTP with random inputs, and remember
    their inputs so the unmasked sums can be checked (:meth:`check`)."""

    def __init__(self, http: httpx.Client, n: int, audience: str) -> None:
        self.http = http
        self.audience = audience
        self.devices = [Identity.new() for _ in range(n)]
        self.inputs: dict[int, dict[int, np.ndarray]] = {}  # round -> device -> x
        self.bits: dict[int, int] = {}
        self.sampled: dict[int, set[int]] = {}
        self.finished: dict[int, str] = {}
        self.errors: list[str] = []
        self.round_in_flight: int | None = None

    def register(self) -> None:
        for d in self.devices:
            d.register(self.http)

    def _get(self, d: Identity, path: str) -> httpx.Response:
        return self.http.get(
            path, headers=sign(d.key, d.device_id, "GET", path, b"", self.audience)
        )

    def _post(self, d: Identity, path: str, body: bytes, ctype: str) -> httpx.Response:
        h = sign(d.key, d.device_id, "POST", path, body, self.audience)
        h["Content-Type"] = ctype
        return self.http.post(path, content=body, headers=h)

    def _state(self, d: Identity, after: int, wait: float) -> dict[str, Any]:
        path = f"/v1/rounds/current?wait={wait:g}&after={after}"
        for _ in range(20):  # a 429 from a busy poll slot: bounded retries
            r = self._get(d, path)
            if r.status_code == 200:
                return dict(r.json())
            time.sleep(0.2)
        raise RuntimeError(f"long-poll failed: {r.status_code} {r.text[:200]}")

    def wait_stage(self, stages: set[str], rid: int | None, timeout: float) -> dict[str, Any]:
        lead = self.devices[0]
        end = time.monotonic() + timeout
        st = self._state(lead, -1, 0)
        while time.monotonic() < end:
            if st["stage"] in stages and (rid is None or st["round"] == rid):
                return st
            if rid is not None and (st["round"] != rid or st["stage"] == "finished"):
                return {"stage": "over", "round": rid}
            st = self._state(lead, st["version"], 2.0)
        raise RuntimeError(f"stuck in {st['stage']}, wanted {stages}")

    def run_round(self, timeout: float = 120.0) -> dict[str, Any]:
        """One round; returns the last state seen. Stage messages go out in order."""
        from secagg import AdvertiseKeys, ClientProtocol, RoundParams, UnmaskRequest

        st = self.wait_stage({"advertise_keys", "finished"}, None, timeout)
        if st["stage"] == "finished":
            return st
        rid = int(st["round"])
        self.round_in_flight = rid
        mine: list[tuple[Identity, Any]] = []
        params = None
        for d in self.devices:
            s = self._state(d, -1, 0)
            if s["sampled"] and s["round"] == rid and s["params"]:
                params = RoundParams.from_dict(s["params"])
                mine.append((d, ClientProtocol(params, d.device_id)))
        if params is None:
            return {"stage": "not sampled", "round": rid}
        self.sampled[rid] = {d.device_id for d, _ in mine}
        self.bits[rid] = params.bits
        gen = np.random.default_rng(rid)
        xs = {
            d.device_id: gen.integers(0, 2**params.bits, size=params.dim, dtype=np.uint64)
            for d, _ in mine
        }
        self.inputs[rid] = xs
        base = f"/v1/rounds/{rid}"
        for d, p in mine:
            self._expect(self._post(d, f"{base}/keys", _j(p.advertise_keys().to_dict()),
                                    "application/json"))  # fmt: skip
        st = self.wait_stage({"share_keys"}, rid, timeout)
        if st["stage"] != "share_keys":
            return self._over(rid, st)
        for d, p in mine:
            got = self._get(d, f"{base}/keys").json()["keys"]
            keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in got.items()}
            self._expect(self._post(d, f"{base}/shares", _j(p.share_keys(keys).to_dict()),
                                    "application/json"))  # fmt: skip
        st = self.wait_stage({"masked_input"}, rid, timeout)
        if st["stage"] != "masked_input":
            return self._over(rid, st)
        for d, p in mine:
            got = self._get(d, f"{base}/shares").json()["ciphertexts"]
            cts = {int(k): base64.b64decode(v) for k, v in got.items()}
            data = p.masked_input(cts, xs[d.device_id]).data
            self._expect(self._post(d, f"{base}/masked-input", data, "application/octet-stream"))
        st = self.wait_stage({"unmask", "consistency_check"}, rid, timeout)
        if st["stage"] == "consistency_check":
            for d, p in mine:
                req = UnmaskRequest.from_dict(self._get(d, f"{base}/consistency").json())
                self._expect(self._post(d, f"{base}/consistency",
                                        _j(p.consistency_check(req).to_dict()),
                                        "application/json"))  # fmt: skip
            st = self.wait_stage({"unmask"}, rid, timeout)
        if st["stage"] != "unmask":
            return self._over(rid, st)
        for d, p in mine:
            req = UnmaskRequest.from_dict(self._get(d, f"{base}/unmask").json())
            self._expect(self._post(d, f"{base}/unmask", _j(p.unmask(req).to_dict()),
                                    "application/json"))  # fmt: skip
        st = self.wait_stage({"done", "aborted", "finished"}, rid, timeout)
        return self._over(rid, st)

    def _over(self, rid: int, st: dict[str, Any]) -> dict[str, Any]:
        rec = [r for r in self.http.get("/v1/rounds").json() if r["round"] == rid]
        self.finished[rid] = rec[0]["status"] if rec else str(st.get("stage"))
        self.round_in_flight = None
        return st

    def _expect(self, r: httpx.Response) -> None:
        if r.status_code >= 300:
            self.errors.append(f"{r.request.method} {r.request.url.path}: {r.status_code} "
                               f"{r.text[:200]}")  # fmt: skip

    def check(self, sums: dict[int, tuple[frozenset[int], np.ndarray]]) -> dict[str, Any]:
        """Per round: done, every honest sampled device a survivor, the exact sum."""
        rounds = []
        for rid in sorted(self.inputs):
            status = self.finished.get(rid, "unknown")
            got = sums.get(rid)
            honest = self.sampled[rid]
            row: dict[str, Any] = {"round": rid, "status": status, "honest_sampled": len(honest)}
            if got is None:
                row.update(survivors=None, honest_all_survived=False, sum_exact=False)
            else:
                survivors, total = got
                modulus = np.uint64(1) << np.uint64(self.bits[rid])
                want = np.zeros_like(total)
                for u in survivors & honest:
                    want = (want + self.inputs[rid][u]) % modulus
                row.update(
                    survivors=len(survivors),
                    honest_all_survived=honest <= survivors,
                    others_in_sum=len(survivors - honest),
                    sum_exact=bool(np.array_equal(want, total % modulus))
                    and not (survivors - honest),
                )
            rounds.append(row)
        return {
            "rounds": rounds,
            "all_done": bool(rounds) and all(r["status"] == "done" for r in rounds),
            "nothing_lost": bool(rounds)
            and all(r["honest_all_survived"] and r["sum_exact"] for r in rounds),
            "honest_errors": self.errors[:20],
        }


def _j(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- the benchmark
def experiment(n_clients: int, rounds: int, stage_timeout: float = 8.0) -> Any:
    """Small digits experiment; every registered device sampled; generous rate limits (the
    fuzzer must reach the protocol code, not only the rate limiter)."""
    from server.config import ExperimentConfig, ServerConfig

    server: dict[str, Any] = {
        "rounds": rounds,
        "clients": n_clients,
        "per_round": n_clients,
        # the fuzz identities are sampled too and never answer: every round waits this
        # long in its first stage, so it sets how many honest rounds fit in the fuzz
        "stage_timeout": stage_timeout,
        "registration_timeout": 600.0,
        "rate_limit_per_s": 2000.0,
        "rate_limit_burst": 2000,
        "max_consecutive_aborts": 1000,
    }
    if "sampling" in {f.name for f in dataclasses.fields(ServerConfig)}:
        server["sampling"] = "fixed"
    return ExperimentConfig.from_dict(
        {
            "server": server,
            "protocol": {"graph": "complete", "dropout": 0.3, "corrupt": 0.1},
            "dp": {"mechanism": "ddgauss", "clip": 1.0, "noise_multiplier": 1.0, "bits": 20},
            "training": {"task": "digits"},
        }
    )


def run(total: int, per_operation: int, honest: int, fuzz_ids: int, workers: int, seed: int,
        max_s: float) -> dict[str, Any]:  # fmt: skip
    import socket

    import uvicorn

    from server.app import create_app
    from server.config import AppSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="secagg-fuzz-"))
    settings = AppSettings(
        experiment=experiment(honest + fuzz_ids, rounds=100_000),
        db_path=tmp / "server.sqlite3",
        log_file=tmp / "server.log",
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_keep_alive=30)
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t_start = time.time()
    with record_sums() as sums, httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(300):  # the server binding its port: bounded wait
            try:
                if http.get("/v1/status").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        spec = http.get("/openapi.json").json()
        cases = generate_cases(spec, per_operation, seed)
        ids = [Identity.new() for _ in range(fuzz_ids)]
        for ident in ids:
            ident.register(http)
        honest_rounds = HonestRounds(http, honest, url)
        honest_rounds.register()
        fuzzer = Fuzzer(http, ids, lambda: honest_rounds.round_in_flight, seed, url)
        stop = threading.Event()
        deadline = time.monotonic() + max_s

        def honest_loop() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    honest_rounds.run_round()
                except (RuntimeError, httpx.HTTPError, ValueError, KeyError) as err:
                    honest_rounds.errors.append(f"{type(err).__name__}: {err}"[:300])
                    return

        ht = threading.Thread(target=honest_loop, daemon=True)
        ht.start()
        it = iter(list(interleave(cases, total, seed)))
        lock = threading.Lock()

        def worker() -> None:
            while time.monotonic() < deadline:
                with lock:
                    case = next(it, None)
                if case is None:
                    return
                fuzzer.send(case)

        ws = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for w in ws:
            w.start()
        for w in ws:
            w.join(max_s + 60)
        stop.set()
        ht.join(300)  # the round in flight finishes (bounded)
        fuzz_s = time.time() - t_start
        summary = fuzzer.summary()
        honest_check = honest_rounds.check(sums)
        status = http.get("/v1/status").json()
    server.should_exit = True
    th.join(30)
    return {
        "benchmark": "fuzz",
        "schemathesis": _version("schemathesis"),
        "seed": seed,
        "operations": sorted(cases),
        "distinct_cases": {k: len(v) for k, v in sorted(cases.items())},
        "elapsed_s": round(fuzz_s, 1),
        "workers": workers,
        "honest_devices": honest,
        "fuzz_identities": fuzz_ids,
        **summary,
        "honest": honest_check,
        "server_rounds_done": status.get("rounds_done"),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def write_report(result: dict[str, Any], out: Path) -> None:
    (out / "fuzz.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    h = result["honest"]
    lines = [
        "# Schema fuzzing with honest rounds running",
        "",
        "Produced by `python -m benchmarks.fuzz` (see its docstring for what is generated and "
        "how requests are authenticated). Server: uvicorn on the loopback interface; "
        f"schemathesis {result['schemathesis']}, seed {result['seed']}, "
        f"{result['workers']} fuzz threads, {result['elapsed_s']} s.",
        "",
        f"- Requests sent: **{result['requests_sent']}** over "
        f"{len(result['operations'])} operations (plus {result['unsendable']} generated "
        "requests that httpx refused to put on the wire).",
        f"- Responses with status >= 500: **{result['server_errors']}**.",
        f"- By authentication mode: {result['by_auth']}.",
        f"- Honest rounds during the fuzz: {len(h['rounds'])}; all done: **{h['all_done']}**; "
        f"every honest sampled device a survivor and every unmasked sum exact: "
        f"**{h['nothing_lost']}**. Honest-device errors: {len(h['honest_errors'])}.",
        "",
        "| operation | distinct cases | requests | status codes |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, counts in result["by_route"].items():
        codes = {k: v for k, v in counts.items() if not k.startswith("auth:")}
        n = sum(v for k, v in codes.items() if k != "unsendable")
        lines.append(
            f"| `{label}` | {result['distinct_cases'].get(label)} | {n} | "
            + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
            + " |"
        )
    lines += [
        "",
        "| honest round | status | honest sampled | survivors | all honest survived | sum exact |",
        "| ---: | --- | ---: | ---: | --- | --- |",
    ]
    for r in h["rounds"]:
        lines.append(
            f"| {r['round']} | {r['status']} | {r['honest_sampled']} | {r['survivors']} | "
            f"{r['honest_all_survived']} | {r['sum_exact']} |"
        )
    if result["failures"]:
        lines += ["", "Failures (first 50):", ""]
        lines += [f"- {f['status']} {f['method']} {f['url'][:120]}: {f['response'][:120]}"
                  for f in result["failures"]]  # fmt: skip
    (out / "fuzz.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import OneLineParser

    p = OneLineParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=12_000, help="cases to send (>= 1)")
    p.add_argument("--per-operation", type=int, default=800, help="cases generated per route")
    p.add_argument("--honest", type=int, default=8, help="honest devices")
    p.add_argument("--fuzz-identities", type=int, default=2, help="registered fuzz devices")
    p.add_argument("--workers", type=int, default=8, help="fuzz threads")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--max-seconds", type=float, default=1800.0)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if min(args.requests, args.per_operation, args.workers, args.fuzz_identities) < 1 or (
        args.honest < 3
    ):
        p.error("--requests, --per-operation, --workers, --fuzz-identities >= 1; --honest >= 3")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run(args.requests, args.per_operation, args.honest, args.fuzz_identities,
                 args.workers, args.seed, args.max_seconds)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(result, out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("by_route", "failures")},
                     indent=1, default=str))  # fmt: skip
    ok = result["server_errors"] == 0 and result["honest"]["nothing_lost"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
