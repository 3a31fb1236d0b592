"""Server (aggregator) side of one secure-aggregation round.

Bonawitz et al., CCS 2017 (Fig. 4) with the neighbour graphs of Bell et al., CCS 2020.
Sans-I/O: ``add_*`` take one client message, ``close_*`` end a stage and return what
the transport relays. Threat model: the server is honest-but-curious (active mode adds
signatures and the ConsistencyCheck); it must not learn any individual input.

What it keeps (and nothing else): the participants' public keys, the opaque share
ciphertexts until they are relayed, sets of ids, the running sum (one array of ``dim``
words mod 2^b) and, in Unmasking, the returned shares. A masked input is unpacked,
added into the running sum and dropped inside :meth:`add_masked_input`.

Sets (Bonawitz et al. notation): U1 advertised keys, U2 shared keys, U3 sent a masked
input (the survivors), U4 signed the survivor set (active mode), U5 returned shares.
Unmasking rebuilds b_u for every u in U3 and s_u^SK for every u in U2 \\ U3, subtracts
PRG(b_u) and, for each dropped u and each neighbour v in U3, the pairwise mask that v
added for u (+PRG(s_vu) if v < u else -PRG(s_vu)).

Not thread-safe: a transport that serves requests concurrently must serialize calls
(one lock per round). :meth:`expected_senders` lists the ids whose message for the
current stage is still missing (empty: the stage can close early).

Every ``add_*`` validates completely before touching state, so a rejected message
(:class:`~secagg.errors.ProtocolError`) leaves the aggregator unchanged. ``close_*`` and
:meth:`finish` raise :class:`~secagg.errors.AbortError` and discard the running sum
when fewer than t parties remain (or some secret cannot be rebuilt): nothing revealed.

One misbehaving client drops itself, not the round:

- AdvertiseKeys with an X25519 key of small order (its agreements are all zero) is
  refused in :meth:`add_advertise`, so its neighbours never see it.
- In :meth:`finish`, when more than t shares of a secret arrived, the extra ones are
  used: a random linear check (:func:`secagg.shamir.shares_consistent`, one inner
  product per secret, with a check vector drawn from ``random_bytes`` after every share
  is in) detects any wrong share while at least t are right, and syndrome decoding
  (:func:`secagg.shamir.find_wrong_shares`) names up to floor((m - t) / 2) wrong ones.
  Their senders are excluded from the whole reconstruction (:attr:`excluded_senders`)
  and every secret is rebuilt from the others' shares. A rebuilt s^SK is also checked
  against its s^PK. With exactly t shares a wrong share of b_u cannot be detected (any
  t points fit a polynomial of degree t - 1) and yields a wrong sum; a wrong share of
  s^SK is detected by the s^PK check but cannot be located, so the round aborts.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from secagg.client import (
    advertise_message,
    consistency_message,
    pair_label,
    pair_seed,
    self_label,
)
from secagg.crypto import (
    Keystream,
    ed25519_verify,
    x25519_agree,
    x25519_check_public,
    x25519_private_key,
    x25519_public_from_private,
)
from secagg.errors import (
    AbortError,
    DuplicateMessageError,
    MalformedMessageError,
    NotParticipantError,
    RoundMismatchError,
    SignatureError,
    StageError,
)
from secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.packing import unpack
from secagg.params import RoundParams
from secagg.shamir import PRIME, SECRET_BYTES, ShamirError, ShareChecker, decode_share
from secagg.stage import Stage

__all__ = ["AggregatorProtocol"]


class AggregatorProtocol:
    """The server's state machine for one round (see module docstring).

    ``random_bytes`` (default: the OS CSPRNG) draws the random consistency check of
    the returned shares in :meth:`finish`; it must be unpredictable to the clients."""

    def __init__(
        self, params: RoundParams, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.params = params
        self._random_bytes = random_bytes
        self._excluded: tuple[int, ...] = ()
        self._stage = Stage.ADVERTISE_KEYS
        self._keys: dict[int, AdvertiseKeys] = {}
        self._cts: dict[int, dict[int, bytes]] = {}
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._u3: set[int] = set()
        self._u4: dict[int, bytes] = {}
        self._shares: dict[int, UnmaskShares] = {}
        self._request: UnmaskRequest | None = None
        self._sum: np.ndarray | None = None
        self._result: np.ndarray | None = None
        self._missing: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ views

    @property
    def stage(self) -> Stage:
        """The messages being collected (or DONE / ABORTED)."""
        return self._stage

    @property
    def survivors(self) -> tuple[int, ...]:
        """Clients whose masked input is in the sum (so far, during MASKED_INPUT)."""
        return tuple(sorted(self._u3))

    @property
    def dropped(self) -> tuple[int, ...]:
        """Participants whose input is not in the sum (once masked inputs are closed;
        before that, those who already failed an earlier stage)."""
        if self._request is not None:
            return tuple(c for c in self.params.participants if c not in self._u3)
        return tuple(c for ids in self._missing.values() for c in ids)

    @property
    def unmask_dropped(self) -> tuple[int, ...]:
        """U2 \\ U3: dropped clients whose pairwise masks are in the sum (s^SK rebuilt)."""
        return tuple(sorted(self._u2 - self._u3)) if self._request is not None else ()

    @property
    def excluded_senders(self) -> tuple[int, ...]:
        """Unmask senders whose shares were found wrong in :meth:`finish` and were left
        out of the reconstruction (their own inputs stay in the sum)."""
        return self._excluded

    def dropouts_by_stage(self) -> dict[str, list[int]]:
        """Stage value -> ids that went missing at that stage (for the round log)."""
        return {k: list(v) for k, v in self._missing.items()}

    def expected_senders(self) -> set[int]:
        """Ids whose message for the current stage has not arrived yet (empty: the stage
        can close now)."""
        s = self._stage
        if s == Stage.ADVERTISE_KEYS:
            return set(self.params.participants) - set(self._keys)
        if s == Stage.SHARE_KEYS:
            return set(self._u1) - set(self._cts)
        if s == Stage.MASKED_INPUT:
            return set(self._u2) - self._u3
        if s == Stage.CONSISTENCY_CHECK:
            return self._u3 - set(self._u4)
        if s == Stage.UNMASK:
            return self._unmask_senders() - set(self._shares)
        return set()

    def _unmask_senders(self) -> set[int]:
        return set(self._u4) if self.params.active else set(self._u3)

    # ------------------------------------------------------------------ helpers

    def _check(
        self, msg: object, cls: type, stage: Stage, allowed: frozenset[int] | set[int] | None
    ) -> int:
        if not isinstance(msg, cls):
            raise MalformedMessageError(f"expected {cls.__name__}, got {type(msg).__name__}")
        round_id = msg.round_id  # type: ignore[attr-defined]
        sender = msg.sender  # type: ignore[attr-defined]
        if round_id != self.params.round_id:
            raise RoundMismatchError(
                f"message for round {round_id}, this is round {self.params.round_id}"
            )
        if not self.params.is_participant(sender):
            raise NotParticipantError(f"client {sender} is not a participant of round {round_id}")
        if self._stage != stage:
            raise StageError(f"{cls.__name__} from {sender} at stage {self._stage.value}")
        if allowed is not None and sender not in allowed:
            raise NotParticipantError(f"client {sender} is no longer part of round {round_id}")
        return sender

    def _abort(self, why: str) -> AbortError:
        if self._sum is not None:
            self._sum.fill(0)
        self._sum = None
        self._cts.clear()
        self._shares.clear()
        self._stage = Stage.ABORTED
        return AbortError(why)

    def _close(
        self, stage: Stage, got: set[int] | frozenset[int], expected: set[int] | frozenset[int]
    ) -> None:
        if self._stage != stage:
            raise StageError(f"cannot close {stage.value} at stage {self._stage.value}")
        self._missing[stage.value] = tuple(sorted(set(expected) - set(got)))
        if len(got) < self.params.threshold:
            raise self._abort(
                f"round {self.params.round_id} aborted at {stage.value}: {len(got)} clients "
                f"remain, threshold {self.params.threshold}"
            )

    def _n2(self, cid: int) -> frozenset[int]:
        """Neighbours of ``cid`` that shared keys (hold its shares / share its masks)."""
        return self.params.neighbour_set(cid) & self._u2

    # ------------------------------------------------------------------ round 0

    def add_advertise(self, msg: AdvertiseKeys) -> None:
        """Accept a client's public keys (active mode: verify its signature). A key of
        small order is refused (:class:`MalformedMessageError`): relayed, it would make
        every neighbour fail in ShareKeys; refused, only its sender is out."""
        sender = self._check(msg, AdvertiseKeys, Stage.ADVERTISE_KEYS, None)
        if sender in self._keys:
            raise DuplicateMessageError(f"client {sender} already advertised keys")
        if msg.c_pk == msg.s_pk:
            raise MalformedMessageError(f"client {sender} advertised equal c_pk and s_pk")
        x25519_check_public(msg.c_pk, f"c_pk of client {sender}")
        x25519_check_public(msg.s_pk, f"s_pk of client {sender}")
        if self.params.active:
            if msg.signature is None or self.params.identity_keys is None:
                raise SignatureError(f"keys of {sender} are not signed")
            ed25519_verify(
                self.params.identity_keys[sender],
                msg.signature,
                advertise_message(self.params.round_id, sender, msg.c_pk, msg.s_pk),
            )
        self._keys[sender] = msg

    def close_advertise(self) -> dict[int, dict[int, AdvertiseKeys]]:
        """End AdvertiseKeys: recipient -> its neighbours' keys (clients still in)."""
        self._close(Stage.ADVERTISE_KEYS, set(self._keys), set(self.params.participants))
        self._u1 = frozenset(self._keys)
        self._stage = Stage.SHARE_KEYS
        return {
            r: {v: self._keys[v] for v in self.params.neighbours(r) if v in self._u1}
            for r in sorted(self._u1)
        }

    # ------------------------------------------------------------------ round 1

    def add_share_keys(self, msg: ShareKeys) -> None:
        """Accept a client's encrypted shares: exactly one ciphertext per neighbour in U1."""
        sender = self._check(msg, ShareKeys, Stage.SHARE_KEYS, self._u1)
        if sender in self._cts:
            raise DuplicateMessageError(f"client {sender} already shared keys")
        want = self.params.neighbour_set(sender) & self._u1
        got = set(msg.ciphertexts)
        if got != want:
            extra, missing = sorted(got - want), sorted(want - got)
            raise MalformedMessageError(
                f"ciphertexts of {sender}: unexpected recipients {extra[:10]}, "
                f"missing {missing[:10]}"
            )
        self._cts[sender] = dict(msg.ciphertexts)

    def close_share_keys(self) -> dict[int, dict[int, bytes]]:
        """End ShareKeys: recipient -> {sender: ciphertext} for clients still in."""
        self._close(Stage.SHARE_KEYS, set(self._cts), self._u1)
        self._u2 = frozenset(self._cts)
        out: dict[int, dict[int, bytes]] = {r: {} for r in sorted(self._u2)}
        for s in sorted(self._u2):
            for r, ct in self._cts[s].items():
                if r in self._u2:
                    out[r][s] = ct
        self._cts.clear()  # relayed: nothing per pair stays on the server
        self._sum = np.zeros(self.params.dim, dtype=self.params.word_dtype)
        self._stage = Stage.MASKED_INPUT
        return out

    # ------------------------------------------------------------------ round 2

    def add_masked_input(self, msg: MaskedInput) -> None:
        """Unpack y_u, add it into the running sum mod 2^b, keep nothing else."""
        sender = self._check(msg, MaskedInput, Stage.MASKED_INPUT, self._u2)
        if sender in self._u3:
            raise DuplicateMessageError(f"client {sender} already sent its masked input")
        p = self.params
        y = unpack(msg.data, p.bits, p.dim, p.word_dtype)  # raises on a wrong length
        if self._sum is None:  # pragma: no cover - set when the stage opened
            raise StageError("no running sum")
        np.add(self._sum, y, out=self._sum)
        y.fill(0)
        del y
        self._u3.add(sender)

    def close_masked_input(self) -> UnmaskRequest:
        """End MaskedInputCollection. Aborts (reveals nothing) unless at least t inputs
        arrived and every secret to rebuild has at least t holders among the survivors.
        Returns the UnmaskRequest (active mode: the one to be signed)."""
        self._close(Stage.MASKED_INPUT, self._u3, self._u2)
        if len(self._u3) < self.params.min_survivors:
            raise self._abort(
                f"round {self.params.round_id} aborted: {len(self._u3)} masked inputs, "
                f"the round needs {self.params.min_survivors}"
            )
        t = self.params.threshold
        for u in sorted(self._u2):
            holders = self._n2(u) & self._u3
            if u in self._u3:
                holders = holders | {u}
            if len(holders) < t:
                kind = "b_u" if u in self._u3 else "s_sk"
                raise self._abort(
                    f"round {self.params.round_id} aborted: {kind} of client {u} has "
                    f"{len(holders)} surviving holders, threshold {t}"
                )
        self._request = UnmaskRequest(
            self.params.round_id, tuple(sorted(self._u3)), tuple(sorted(self._u2 - self._u3)), None
        )
        self._stage = Stage.CONSISTENCY_CHECK if self.params.active else Stage.UNMASK
        return self._request

    # ------------------------------------------------------------------ round 3

    def add_consistency(self, msg: ConsistencyCheck) -> None:
        """Active mode: accept a survivor's signature over the survivor set."""
        sender = self._check(msg, ConsistencyCheck, Stage.CONSISTENCY_CHECK, self._u3)
        if sender in self._u4:
            raise DuplicateMessageError(f"client {sender} already signed")
        if self._request is None or self.params.identity_keys is None:  # pragma: no cover
            raise StageError("no survivor set to sign")
        ed25519_verify(
            self.params.identity_keys[sender],
            msg.signature,
            consistency_message(self.params.round_id, sender, self._request.survivors),
        )
        self._u4[sender] = msg.signature

    def close_consistency(self) -> UnmaskRequest:
        """Active mode: end ConsistencyCheck; the request now carries >= t signatures."""
        self._close(Stage.CONSISTENCY_CHECK, set(self._u4), self._u3)
        if self._request is None:  # pragma: no cover
            raise StageError("no survivor set")
        self._request = UnmaskRequest(
            self._request.round_id,
            self._request.survivors,
            self._request.dropped,
            dict(sorted(self._u4.items())),
        )
        self._stage = Stage.UNMASK
        return self._request

    @property
    def unmask_request(self) -> UnmaskRequest | None:
        """The request currently served to clients (None before MaskedInput closes)."""
        return self._request

    # ------------------------------------------------------------------ round 4

    def add_unmask(self, msg: UnmaskShares) -> None:
        """Accept a survivor's shares: b-shares of exactly its surviving holders-of set,
        s^SK-shares of exactly its dropped neighbours."""
        sender = self._check(msg, UnmaskShares, Stage.UNMASK, self._unmask_senders())
        if sender in self._shares:
            raise DuplicateMessageError(f"client {sender} already sent its shares")
        n2 = self._n2(sender)
        want_b = (n2 | {sender}) & self._u3
        want_sk = n2 - self._u3
        if set(msg.self_mask_shares) != want_b or set(msg.secret_key_shares) != want_sk:
            raise MalformedMessageError(f"shares of {sender} do not match its neighbours")
        for peer, share in (*msg.self_mask_shares.items(), *msg.secret_key_shares.items()):
            try:
                decode_share(share)
            except ShamirError as err:
                raise MalformedMessageError(f"share of {sender} for {peer}: {err}") from err
        self._shares[sender] = msg

    def finish(self) -> np.ndarray:
        """Rebuild the secrets, strip every remaining mask, return the sum (np.uint64,
        length dim) mod 2^b of the survivors' inputs. Wrong shares found with the extra
        shares exclude their senders (:attr:`excluded_senders`; module docstring).
        Aborts (discarding the running sum) if some secret has fewer than t shares from
        the remaining senders or its wrong shares cannot be located."""
        if self._stage == Stage.DONE and self._result is not None:
            return self._result.copy()
        self._close(Stage.UNMASK, set(self._shares), self._unmask_senders())
        p = self.params
        raw = self._random_bytes(40)
        if not isinstance(raw, bytes) or len(raw) != 40:
            raise ValueError("random_bytes(40) must return 40 bytes")
        rho = int.from_bytes(raw, "little") % PRIME
        excluded: set[int] = set()
        try:
            while True:  # each pass either finishes or excludes at least one more sender
                seeds, wrong = self._rebuild(rho, excluded)
                if not wrong:
                    break
                excluded |= wrong
        except (ShamirError, MalformedMessageError) as err:
            raise self._abort(f"round {p.round_id} aborted in unmasking: {err}") from err
        self._excluded = tuple(sorted(excluded))
        total = self._sum
        if total is None:  # pragma: no cover
            raise StageError("no running sum")
        ks = Keystream(p.dim, p.word_dtype)
        for seed, lab, sign in seeds:
            mask = ks.fill(seed, lab)
            if sign < 0:
                total -= mask
            else:
                total += mask
        ks.release()
        total &= p.word_dtype(p.modulus - 1)
        self._result = total.astype(np.uint64)
        self._sum = None
        self._shares.clear()
        self._stage = Stage.DONE
        return self._result.copy()

    def _rebuild(
        self, rho: int, excluded: set[int]
    ) -> tuple[list[tuple[bytes, bytes, int]], set[int]]:
        """One reconstruction pass without the shares of ``excluded`` senders. Returns the
        mask seeds (seed, PRG label, -1 subtract / +1 add) and the senders whose shares
        were found wrong in this pass (non-empty: the caller runs another pass)."""
        p = self.params
        t = p.threshold
        b_holders: dict[int, dict[int, int]] = {u: {} for u in self._u3}
        sk_holders: dict[int, dict[int, int]] = {u: {} for u in self._u2 - self._u3}
        for v, msg in self._shares.items():
            if v in excluded:
                continue
            for u, share in msg.self_mask_shares.items():
                b_holders[u][v + 1] = decode_share(share)
            for u, share in msg.secret_key_shares.items():
                sk_holders[u][v + 1] = decode_share(share)
        checker = ShareChecker(t, rho)
        wrong: set[int] = set()

        def rebuild(shares: dict[int, int], what: str) -> tuple[int, int]:
            if len(shares) < t:
                raise ShamirError(
                    f"{what} has {len(shares)} shares from trusted holders, threshold {t}"
                )
            value, bad = checker.reconstruct(shares)
            wrong.update(x - 1 for x in bad)
            if value >= 1 << (8 * SECRET_BYTES):
                raise ShamirError(f"rebuilt {what} is not a 32-byte secret")
            return value, len(shares) - len(bad)

        seeds: list[tuple[bytes, bytes, int]] = []
        for u in sorted(b_holders):
            b_u, _ = rebuild(b_holders[u], f"b_u of client {u}")
            seeds.append((b_u.to_bytes(SECRET_BYTES, "little"), self_label(p.round_id, u), -1))
        for u in sorted(sk_holders):
            value, used = rebuild(sk_holders[u], f"s_sk of client {u}")
            s_sk = value.to_bytes(SECRET_BYTES, "little")
            if x25519_public_from_private(s_sk) != self._keys[u].s_pk:
                hint = (
                    "exactly t shares: a wrong one cannot be located"
                    if used == t
                    else "more wrong shares than can be located"
                )
                raise ShamirError(f"rebuilt s_sk of {u} does not match its s_pk ({hint})")
            s_key = x25519_private_key(s_sk)
            for v in sorted(self._n2(u) & self._u3):
                dh = x25519_agree(s_key, self._keys[v].s_pk)
                # v added +PRG(s_uv) if v < u else -PRG(s_uv): undo it
                seeds.append(
                    (
                        pair_seed(dh, p.round_id, u, v),
                        pair_label(p.round_id, u, v),
                        -1 if v < u else 1,
                    )
                )
        return seeds, wrong
