"""Operator controls: start, pause and resume training, change the rounds planned, the
per-round cohort and the ε budget, enable or disable devices; every change logged.

Authentication. At start the server draws an operator token from the OS CSPRNG
(:func:`new_operator_token`, 256 bits), prints it once on its standard output (never to
the log), and keeps only its SHA-256 (in memory and in the store's ``meta``, so the
database says which token governed it; a restart issues a new one). A control request
carries it as ``Authorization: Bearer <token>``; the digest of what it presents is
compared with the stored one in constant time (:func:`hmac.compare_digest`). Anything
else is refused with 401 before the body is read. The read-only views (state, change
log, round log) stay public and publish counts, never device ids.

Privacy accounting. Every change is written to SQLite (``control_log``) with its time and
the first round it can affect, and the round log records what each round actually ran
with (``per_round``, ``candidates``, ``sample_rate``, ``charged_cohort``), because:

- A new per-round cohort changes the sampling rate q = per_round / N. Under Poisson
  sampling the accountant charges every round as its actual cohort s_r of N without
  replacement (``dp.accounting``), so a new q is accounted exactly: the accountant is
  rebuilt at the next round for the new q and the ledger replayed
  (``ServerCore._sync_accountant``). Under fixed-size sampling the accountant charges the
  same k of N every round and cannot compose rounds of different k: a cohort change is
  refused with 409.
- Disabling devices shrinks the set a round is sampled from; a round with s of N_r < N
  enabled devices is charged at a cohort whose fraction of N is at least s / N_r
  (``server.round.charged_cohort``), never less than what ran. Under fixed-size sampling
  at least ``per_round`` devices must stay enabled.
- The ε budget is checked before every round against the unamplified ε (valid against
  this server); it cannot be set below the ε already spent.

Pausing takes effect between rounds: a round in flight finishes (or aborts on its own
deadlines) as usual, then no round starts until the operator resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from server.driver import RoundDriver
from server.errors import ApiError
from server.round import STAGE_NAMES
from server.store import StoreError

__all__ = [
    "TOKEN_META_KEY",
    "STATE_META_KEY",
    "OperatorControl",
    "new_operator_token",
    "public_entry",
    "token_digest",
]

log = logging.getLogger("server.control")

TOKEN_META_KEY = "operator_token_sha256"  # noqa: S105 - a meta key, not a secret
STATE_META_KEY = "operator"
#: most token characters a request may present (a token is 43)
MAX_TOKEN_CHARS = 256
_IN_ROUND = frozenset(name for name in STAGE_NAMES.values() if name not in ("done", "aborted"))


def new_operator_token() -> str:
    """A fresh operator token: 32 bytes from the OS CSPRNG, URL-safe base64 (43 chars)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """SHA-256 of the token, hex. The token has 256 bits of entropy: no salt is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def public_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The public form of a change-log entry: device ids become a count."""
    detail = dict(entry.get("detail") or {})
    out: dict[str, Any] = {}
    if entry.get("action") == "devices":
        out["enabled"] = bool(detail.get("enabled"))
        out["count"] = len(detail.get("devices") or ())
    else:
        for key, value in detail.items():
            if key == "devices":
                continue
            if value is None or isinstance(value, bool | int | float | str):
                out[key] = value
            elif isinstance(value, list | tuple) and all(
                v is None or isinstance(v, bool | int | float) for v in value
            ):
                out[key] = list(value)
    return {
        "id": int(entry["id"]),
        "at": float(entry["at"]),
        "action": str(entry["action"]),
        "before_round": int(entry["before_round"]),
        "detail": out,
    }


class OperatorControl:
    """The operator's controls over one :class:`RoundDriver`, checked and logged.

    Every method runs on the event loop (as does the driver's round loop), so a change
    never interleaves with the start of a round. Refusals raise :class:`ApiError` with a
    4xx status and a sentence saying why.
    """

    def __init__(self, driver: RoundDriver, digest: str) -> None:
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ValueError(f"digest must be a SHA-256 hex string, got {digest!r}")
        self.driver = driver
        self.core = driver.core
        self.store = driver.store
        self._digest = bytes.fromhex(digest)
        self.store.set_meta(TOKEN_META_KEY, digest)

    # ------------------------------------------------------------------ authentication
    def authorize(self, header: str | None) -> None:
        """Check an ``Authorization`` header; 401 unless it carries the operator token."""
        challenge = {"WWW-Authenticate": 'Bearer realm="secagg-dp operator"'}
        if not header:
            raise ApiError(
                401,
                "operator token required: send 'Authorization: Bearer <token>' with the "
                "token the server printed at start",
                headers=challenge,
            )
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise ApiError(
                401, "the Authorization header must be 'Bearer <token>'", headers=challenge
            )
        if len(presented) > MAX_TOKEN_CHARS or not presented.isascii():
            raise ApiError(401, "invalid operator token", headers=challenge)
        given = hashlib.sha256(presented.encode("ascii")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise ApiError(401, "invalid operator token", headers=challenge)

    # ------------------------------------------------------------------ saved state
    def restore(self) -> None:
        """Apply what the operator set before a restart (call before the driver's
        ``restore``, so that the rounds planned decide whether training is finished)."""
        saved = self.store.get_meta(STATE_META_KEY)
        if saved is None:
            return
        if not isinstance(saved, dict):
            raise StoreError(f"operator state in the database is not an object: {saved!r}")
        over = saved.get("overrides") or {}
        disabled = saved.get("disabled") or []
        if (
            not isinstance(over, dict)
            or not isinstance(disabled, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in disabled)
        ):
            raise StoreError(f"operator state in the database is malformed: {saved!r}")
        server = self.core.config.server
        self._set_config(
            rounds=int(over.get("rounds", server.rounds)),
            epsilon_budget=over.get("epsilon_budget", server.epsilon_budget),
        )
        if "per_round" in over:
            self.core.sampler.per_round = int(over["per_round"])
        self.driver.disabled = frozenset(disabled)
        if saved.get("paused"):
            self.driver.pause()
        log.info(
            "operator state restored: paused %s, %d device(s) disabled, overrides %s",
            bool(saved.get("paused")),
            len(disabled),
            sorted(over),
        )

    def _save(self, **overrides: Any) -> None:
        saved = self.store.get_meta(STATE_META_KEY) or {}
        over = dict(saved.get("overrides") or {})
        over.update(overrides)
        self.store.set_meta(
            STATE_META_KEY,
            {
                "paused": self.driver.paused,
                "disabled": sorted(self.driver.disabled),
                "overrides": over,
            },
        )

    def _set_config(self, *, rounds: int, epsilon_budget: float | None) -> None:
        cfg = self.core.config
        server = dataclasses.replace(cfg.server, rounds=rounds, epsilon_budget=epsilon_budget)
        self.core.config = dataclasses.replace(cfg, server=server)
        self.driver.config = self.core.config

    # ------------------------------------------------------------------ views
    def _in_round(self) -> bool:
        return self.driver.stage in _IN_ROUND

    def cohort_change_refusal(self) -> str | None:
        """Why ``per_round`` cannot change (None: it can)."""
        if self.core.sampler.kind == "fixed":
            return (
                "fixed-size sampling: the privacy accountant charges the same k of N devices "
                "every round and cannot compose rounds of another k; the cohort can only "
                "change with Poisson sampling (or in a new experiment, with a new --db)"
            )
        return None

    def state(self) -> dict[str, Any]:
        """The operator state, public (counts only)."""
        d, core = self.driver, self.core
        registered = self.store.device_count()
        disabled = sum(1 for i in d.disabled if 0 <= i < registered)
        if d.finished:
            training = "finished"
        elif d.paused:
            training = "paused"
        elif d.stage == "waiting":
            training = "waiting"
        else:
            training = "running"
        return {
            "paused": d.paused,
            "pausing": d.paused and self._in_round(),
            "training": training,
            "rounds_planned": core.config.server.rounds,
            "rounds_done": core.rounds_done,
            "per_round": core.sampler.per_round,
            "epsilon_budget": core.config.server.epsilon_budget,
            "sampling": core.sampler.kind,
            "registered": registered,
            "enabled": registered - disabled,
            "disabled": disabled,
            "cohort_change": self.cohort_change_refusal(),
        }

    def public_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [public_entry(e) for e in self.store.control_log(limit)]

    def devices(self) -> list[dict[str, Any]]:
        """Every registered device with its enabled flag (operator only: names ids)."""
        disabled = self.driver.disabled
        return [
            {"device_id": i, "enabled": i not in disabled} for i in sorted(self.store.device_keys())
        ]

    # ------------------------------------------------------------------ controls
    def _log(self, action: str, detail: dict[str, Any]) -> dict[str, Any]:
        entry = self.store.log_control(action, detail, self.store.next_round_id())
        log.info(
            "operator: %s %s (from round %d)",
            action,
            public_entry(entry)["detail"],
            entry["before_round"],
        )
        self.driver.touch()
        return public_entry(entry)

    def start(self) -> tuple[dict[str, Any], str]:
        """Start training now: resume a pause, run a finished experiment again once its
        stop reason is gone, or begin without waiting for every expected device."""
        d, core = self.driver, self.core
        if d.paused:
            d.resume()
            self._save()
            return self._log("start", {"resumed": True}), "training resumed"
        if not d.finished and (d.stage != "waiting" or d.start_requested):
            raise ApiError(409, f"training is already running (stage {d.stage})")
        enabled = len(d.candidates())
        if enabled < 2:
            raise ApiError(
                409,
                f"cannot start: a secure round needs at least 2 enabled devices, "
                f"{enabled} are registered and enabled",
            )
        if d.finished:
            still = self._blocker()
            if still is not None:
                raise ApiError(409, f"cannot start: {still}")
            core.finished_reason = None
            core.consecutive_aborts = 0
        d.start_now()
        self._save()
        return self._log("start", {"enabled_devices": enabled}), "training started"

    def _blocker(self) -> str | None:
        """What would stop a restarted training at once (None: it could run)."""
        core = self.core
        saved = core.finished_reason, core.consecutive_aborts
        core.finished_reason, core.consecutive_aborts = None, 0
        try:
            return core.stop_reason() or self._budget_spent()
        finally:
            core.finished_reason, core.consecutive_aborts = saved

    def _budget_spent(self) -> str | None:
        budget = self.core.config.server.epsilon_budget
        spent = self._epsilon_spent()
        if budget is not None and (spent is None or spent >= budget):
            shown = "infinite" if spent is None else f"{spent:.6g}"
            return f"the ε budget {budget:g} is spent (ε = {shown}): raise it first"
        return None

    def _epsilon_spent(self) -> float | None:
        eps = self.core.epsilon_report().get("epsilon")
        return None if eps is None or not math.isfinite(float(eps)) else float(eps)

    def pause(self) -> tuple[dict[str, Any], str]:
        d = self.driver
        if d.finished:
            raise ApiError(409, f"training has finished ({d.finished_reason}): nothing to pause")
        if d.paused:
            raise ApiError(409, "training is already paused")
        in_round = self._in_round()
        d.pause()
        self._save()
        entry = self._log("pause", {"round_in_flight": in_round})
        if in_round:
            return entry, "pausing: the round in flight finishes, then no new round starts"
        return entry, "paused: no new round starts until resumed"

    def resume(self) -> tuple[dict[str, Any], str]:
        d = self.driver
        if not d.paused:
            raise ApiError(409, "training is not paused")
        d.resume()
        self._save()
        return self._log("resume", {}), "training resumed"

    def update(self, values: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """Apply any of ``rounds``, ``per_round``, ``epsilon_budget`` (None: no budget),
        checked together first; nothing changes if one is refused."""
        core = self.core
        server = core.config.server
        if not values:
            raise ApiError(422, "nothing to change: give rounds, per_round or epsilon_budget")
        changes: dict[str, list[Any]] = {}
        rounds = server.rounds
        if "rounds" in values:
            rounds = int(values["rounds"])
            floor = core.rounds_done + (1 if self._in_round() else 0)
            if rounds < floor:
                raise ApiError(
                    409,
                    f"rounds must be at least {floor} (rounds already done"
                    f"{' plus the one in flight' if self._in_round() else ''}), got {rounds}",
                )
            if rounds != server.rounds:
                changes["rounds"] = [server.rounds, rounds]
        per_round = core.sampler.per_round
        if "per_round" in values:
            per_round = int(values["per_round"])
            if per_round != core.sampler.per_round:
                refusal = self.cohort_change_refusal()
                if refusal is not None:
                    raise ApiError(409, f"cannot change the per-round cohort: {refusal}")
                changes["per_round"] = [core.sampler.per_round, per_round]
        budget = server.epsilon_budget
        if "epsilon_budget" in values:
            raw = values["epsilon_budget"]
            budget = None if raw is None else float(raw)
            if budget is not None:
                spent = self._epsilon_spent()  # 0.0 before any charge
                if spent is None or budget <= spent:
                    shown = "infinite (no guarantee)" if spent is None else f"{spent:.6g}"
                    raise ApiError(
                        409,
                        f"epsilon_budget {budget:g} is not above the ε already spent "
                        f"({shown}): no further round could run",
                    )
            if budget != server.epsilon_budget:
                changes["epsilon_budget"] = [server.epsilon_budget, budget]
        if not changes:
            return None, "no change"
        self._set_config(rounds=rounds, epsilon_budget=budget)
        core.sampler.per_round = per_round
        self._save(**{k: v[1] for k, v in changes.items()})
        entry = self._log("settings", changes)
        said = ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in changes.items())
        tail = ""
        if self.driver.finished and self._blocker() is None:
            tail = "; training had finished: start it to run the new rounds"
        return entry, f"from round {entry['before_round']}: {said}{tail}"

    def set_devices(self, ids: Iterable[int], enabled: bool) -> tuple[dict[str, Any], str]:
        """Enable or disable registered devices; disabled ones are not sampled."""
        d, core = self.driver, self.core
        wanted = sorted(set(int(i) for i in ids))
        registered = self.store.device_keys()
        unknown = [i for i in wanted if i not in registered]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ApiError(404, f"unknown device id(s): {shown}")
        disabled = set(d.disabled) - set(wanted) if enabled else set(d.disabled) | set(wanted)
        left = len(registered) - len(disabled & set(registered))
        if not enabled:
            if left < 2:
                raise ApiError(
                    409,
                    f"at least 2 devices must stay enabled for a secure round, "
                    f"this would leave {left}",
                )
            k = core.sampler.per_round
            if core.sampler.kind == "fixed" and left < k:
                raise ApiError(
                    409,
                    f"fixed-size sampling draws per_round = {k} devices every round and the "
                    f"accountant charges exactly that many: at least {k} must stay enabled, "
                    f"this would leave {left}",
                )
        d.disabled = frozenset(disabled)
        if enabled:
            d.notify_registered()  # a loop waiting for devices may go on
        self._save()
        entry = self._log("devices", {"enabled": bool(enabled), "devices": wanted})
        verb = "enabled" if enabled else "disabled"
        return entry, f"{len(wanted)} device(s) {verb}; {left} of {len(registered)} enabled"
