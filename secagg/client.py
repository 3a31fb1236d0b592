"""Client (device) side of one secure-aggregation round.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (Fig. 4), with the
neighbour graphs of Bell et al., CCS 2020 (SecAgg+). Sans-I/O: every method takes the
messages the server relayed and returns the message to send; randomness is injected.

Double masking. The client sends ``y_u = x_u + PRG(b_u) + sum_{v in N(u)} ±PRG(s_uv)``
mod 2^b, with ``+`` if u < v and ``-`` if u > v, where b_u is a fresh 32-byte seed and
s_uv = HKDF(X25519(s_u^SK, s_v^PK)) bound to the round and the unordered pair. Shares
of b_u and s_u^SK go to the neighbours (and the client keeps its own). In Unmasking an
honest client reveals, for each peer, the share of b_u (peer survived) OR the share of
s^SK (peer dropped), never both, ever; otherwise a server could strip both masks of an
input that it actually received. The client checks the server's request against what
it knows (it sent its own input; survivor and dropped sets are disjoint; at least t
survivors; every neighbour that shared keys is accounted for; in active mode the set
signed by at least t clients in the ConsistencyCheck).

Before anything else the client checks the round against its local policy
(:class:`~secagg.policy.ClientPolicy`: threshold against its own corrupt-client
assumption, the split-view bound in active mode, cohort, graph, bits, minimum
survivors) and, in active mode, the round's identity keys against keys it pinned
itself; a round outside it raises :class:`~secagg.errors.PolicyError`.

A method that raises :class:`~secagg.errors.ProtocolError` leaves the client unchanged
(the caller may retry with a correct message); :class:`~secagg.errors.AbortError` moves
it to ``Stage.ABORTED``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.crypto import (
    AEAD_NONCE_BYTES,
    Keystream,
    aead_decrypt,
    aead_encrypt,
    concat_ids,
    ed25519_public_bytes,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    label,
    x25519_agree,
    x25519_check_public,
    x25519_keypair,
    x25519_private_key,
)
from secagg.errors import (
    AbortError,
    MalformedMessageError,
    NotParticipantError,
    RefusedError,
    RoundMismatchError,
    SignatureError,
    StageError,
)
from secagg.messages import (
    SHARE_PLAINTEXT_BYTES,
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.packing import pack_reduced
from secagg.params import RoundParams
from secagg.policy import ClientPolicy
from secagg.shamir import SHARE_BYTES, split_bytes
from secagg.stage import Stage

__all__ = [
    "ClientProtocol",
    "advertise_message",
    "consistency_message",
    "pair_seed",
    "share_ad",
    "share_key",
    "share_nonce",
]


def advertise_message(round_id: int, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """Bytes signed in AdvertiseKeys (active mode)."""
    return label("advertise-keys", round_id, sender) + c_pk + s_pk


def consistency_message(round_id: int, sender: int, survivors: tuple[int, ...]) -> bytes:
    """Bytes signed in ConsistencyCheck: the round, the signer and the survivor set."""
    return label("consistency-check", round_id, sender) + concat_ids(survivors)


def share_key(dh: bytes, round_id: int, sender: int, receiver: int) -> bytes:
    """AEAD key for the shares sent from ``sender`` to ``receiver`` (one per direction)."""
    return hkdf_sha256(dh, label("share-encryption-key", round_id, sender, receiver))


def share_nonce(round_id: int, sender: int, receiver: int) -> bytes:
    """AEAD nonce of a share ciphertext, derived from round, sender and receiver.

    Each share key is used for exactly one message (fresh X25519 keys every round, one
    key per direction), so a deterministic nonce never repeats under a key; deriving it
    binds the round and both parties, and the receiver rejects any other nonce."""
    return hashlib.sha256(label("share-nonce", round_id, sender, receiver)).digest()[
        :AEAD_NONCE_BYTES
    ]


def share_ad(round_id: int, sender: int, receiver: int) -> bytes:
    """Associated data of a share ciphertext: binds round, sender and receiver."""
    return label("share-ciphertext", round_id, sender, receiver)


def pair_seed(dh: bytes, round_id: int, u: int, v: int) -> bytes:
    """Pairwise mask seed s_uv from the X25519 secret of s_u^SK and s_v^PK (symmetric)."""
    lo, hi = (u, v) if u < v else (v, u)
    return hkdf_sha256(dh, label("pairwise-mask-seed", round_id, lo, hi))


def pair_label(round_id: int, u: int, v: int) -> bytes:
    """PRG label of the pairwise mask of {u, v}."""
    lo, hi = (u, v) if u < v else (v, u)
    return label("pairwise-mask", round_id, lo, hi)


def self_label(round_id: int, u: int) -> bytes:
    """PRG label of u's self mask."""
    return label("self-mask", round_id, u)


class ClientProtocol:
    """One device's state machine for one round (see module docstring).

    ``policy``: the rounds this device accepts (None: :class:`ClientPolicy` defaults).
    ``pinned_identity_keys``: participant id -> raw Ed25519 identity key, learned by the
    device independently of this round (at registration or from a signed roster); in
    active mode the round's ``identity_keys`` must agree with them for every
    participant. Raises :class:`PolicyError` for a round outside the policy, and
    ``ValueError`` if ``client_id`` is not a participant or ``signing_key`` does not
    match its identity key.
    """

    def __init__(
        self,
        params: RoundParams,
        client_id: int,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        policy: ClientPolicy | None = None,
        pinned_identity_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        if not params.is_participant(client_id):
            raise ValueError(f"client {client_id} is not a participant of round {params.round_id}")
        policy = ClientPolicy() if policy is None else policy
        if not isinstance(policy, ClientPolicy):
            raise TypeError(f"policy must be a ClientPolicy, got {type(policy).__name__}")
        policy.check(params, pinned_identity_keys)
        if params.active:
            if signing_key is None:
                raise ValueError("active mode needs the client's Ed25519 signing_key")
            if (
                params.identity_keys is None
                or ed25519_public_bytes(signing_key) != params.identity_keys[client_id]
            ):
                raise ValueError(f"signing_key does not match identity key of client {client_id}")
        self.params = params
        self.client_id = client_id
        self._signing_key = signing_key
        self._random_bytes = random_bytes
        self._stage = Stage.ADVERTISE_KEYS
        self._neighbours = params.neighbour_set(client_id)
        self._c_sk = b""
        self._s_sk = b""
        self._c_pk = b""
        self._s_pk = b""
        self._b_u = b""
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._c_dh: dict[int, bytes] = {}
        self._pair_seeds: dict[int, bytes] = {}
        self._own_shares: tuple[bytes, bytes] = (b"", b"")
        self._held_b: dict[int, bytes] = {}
        self._held_sk: dict[int, bytes] = {}
        self._signed_survivors: tuple[int, ...] | None = None
        self._revealed_b: set[int] = set()
        self._revealed_sk: set[int] = set()

    @property
    def stage(self) -> Stage:
        """The next message this client will produce (or DONE / ABORTED)."""
        return self._stage

    def _expect(self, *stages: Stage) -> None:
        if self._stage not in stages:
            want = " or ".join(s.value for s in stages)
            raise StageError(f"client {self.client_id} is at stage {self._stage.value}, not {want}")

    def _abort(self, why: str) -> AbortError:
        self._stage = Stage.ABORTED
        self._b_u = self._s_sk = self._c_sk = b""
        self._held_b.clear()
        self._held_sk.clear()
        self._pair_seeds = {}
        self._c_dh = {}
        return AbortError(why)

    # ------------------------------------------------------------------ round 0

    def advertise_keys(self) -> AdvertiseKeys:
        """Draw two X25519 key pairs (c: share encryption, s: pairwise masks)."""
        self._expect(Stage.ADVERTISE_KEYS)
        c_sk, c_pk = x25519_keypair(self._random_bytes)
        s_sk, s_pk = x25519_keypair(self._random_bytes)
        signature = None
        if self.params.active and self._signing_key is not None:
            signature = ed25519_sign(
                self._signing_key,
                advertise_message(self.params.round_id, self.client_id, c_pk, s_pk),
            )
        self._c_sk, self._s_sk = c_sk, s_sk
        self._c_pk, self._s_pk = c_pk, s_pk
        self._stage = Stage.SHARE_KEYS
        return AdvertiseKeys(self.params.round_id, self.client_id, c_pk, s_pk, signature)

    # ------------------------------------------------------------------ round 1

    def share_keys(self, keys: Mapping[int, AdvertiseKeys]) -> ShareKeys:
        """Share b_u and s_u^SK (t-of-(|keys|+1)) with the neighbours whose keys arrived.

        Raises :class:`ProtocolError` for a non-neighbour, another round, a sender
        mismatch, a key of small order (an honest server refuses those at advertise) or
        (active mode) a bad signature; :class:`AbortError` if fewer than t parties (self
        included) remain."""
        self._expect(Stage.SHARE_KEYS)
        p = self.params
        peers: dict[int, tuple[bytes, bytes]] = {}
        for cid, msg in keys.items():
            if not isinstance(msg, AdvertiseKeys):
                raise MalformedMessageError(f"keys[{cid}] is not an AdvertiseKeys message")
            if msg.round_id != p.round_id:
                raise RoundMismatchError(
                    f"keys of {cid} are for round {msg.round_id}, not {p.round_id}"
                )
            if msg.sender != cid:
                raise MalformedMessageError(f"keys[{cid}] carries sender {msg.sender}")
            if cid == self.client_id:
                if (msg.c_pk, msg.s_pk) != (self._c_pk, self._s_pk):
                    raise MalformedMessageError("relayed keys for this client are not its own")
                continue
            if cid not in self._neighbours:
                raise NotParticipantError(f"client {cid} is not a neighbour of {self.client_id}")
            if msg.c_pk == msg.s_pk:
                raise MalformedMessageError(f"client {cid} advertised equal c_pk and s_pk")
            x25519_check_public(msg.c_pk, f"c_pk of client {cid}")
            x25519_check_public(msg.s_pk, f"s_pk of client {cid}")
            if p.active:
                if msg.signature is None or p.identity_keys is None:
                    raise SignatureError(f"keys of {cid} are not signed")
                ed25519_verify(
                    p.identity_keys[cid],
                    msg.signature,
                    advertise_message(p.round_id, cid, msg.c_pk, msg.s_pk),
                )
            peers[cid] = (msg.c_pk, msg.s_pk)
        if len(peers) + 1 < p.threshold:
            raise self._abort(
                f"only {len(peers) + 1} parties (self included) for threshold {p.threshold}"
            )
        c_key = x25519_private_key(self._c_sk)
        s_key = x25519_private_key(self._s_sk)
        c_dh = {cid: x25519_agree(c_key, pk[0]) for cid, pk in peers.items()}
        # s_uv for every neighbour now, so that MaskedInput is keystream + adds only
        seeds = {
            v: pair_seed(x25519_agree(s_key, pk[1]), p.round_id, self.client_id, v)
            for v, pk in peers.items()
        }
        order = sorted(peers)
        b_u = self._random_bytes(32)
        if len(b_u) != 32:
            raise ValueError("random_bytes(32) must return 32 bytes")
        xs = [self.client_id + 1] + [v + 1 for v in order]
        shares_b, shares_sk = split_bytes([b_u, self._s_sk], p.threshold, xs, self._random_bytes)
        cts: dict[int, bytes] = {}
        for i, v in enumerate(order, start=1):
            plaintext = struct.pack(">QQ", self.client_id, v) + shares_b[i] + shares_sk[i]
            nonce = share_nonce(p.round_id, self.client_id, v)
            key = share_key(c_dh[v], p.round_id, self.client_id, v)
            cts[v] = aead_encrypt(key, nonce, plaintext, share_ad(p.round_id, self.client_id, v))
        self._peer_keys = peers
        self._c_dh = c_dh
        self._pair_seeds = seeds
        self._b_u = b_u
        self._own_shares = (shares_b[0], shares_sk[0])
        self._stage = Stage.MASKED_INPUT
        return ShareKeys(p.round_id, self.client_id, cts)

    # ------------------------------------------------------------------ round 2

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        arr = np.asarray(x)
        if arr.ndim != 1 or arr.shape[0] != p.dim:
            raise ValueError(f"input must have shape ({p.dim},), got {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"input must be an integer array, got dtype {arr.dtype}")
        if arr.size:
            low = int(arr.min()) if arr.dtype.kind == "i" else 0
            high = int(arr.max())
            if low < 0 or high >= p.modulus:
                raise ValueError(
                    f"input entries must be in [0, 2^{p.bits}), got range [{low}, {high}]"
                )
        return arr

    def masked_input(self, ciphertexts: Mapping[int, bytes], x: np.ndarray) -> MaskedInput:
        """Decrypt the shares addressed to this client and send the double-masked input.

        ``ciphertexts``: sender -> ciphertext (only neighbours whose keys this client
        received). Raises :class:`ProtocolError` on a non-neighbour or a ciphertext that
        fails authentication (state unchanged); :class:`AbortError` if fewer than t
        parties (self included) shared keys."""
        self._expect(Stage.MASKED_INPUT)
        p = self.params
        arr = self._check_input(x)
        held_b: dict[int, bytes] = {}
        held_sk: dict[int, bytes] = {}
        for u, ct in ciphertexts.items():
            if u not in self._peer_keys:
                raise NotParticipantError(
                    f"ciphertext from {u}, which is not a neighbour that advertised keys "
                    f"to {self.client_id}"
                )
            if not isinstance(ct, bytes):
                raise MalformedMessageError(f"ciphertext from {u} is not bytes")
            if ct[:AEAD_NONCE_BYTES] != share_nonce(p.round_id, u, self.client_id):
                raise SignatureError(f"ciphertext from {u} carries a foreign nonce")
            key = share_key(self._c_dh[u], p.round_id, u, self.client_id)
            pt = aead_decrypt(key, ct, share_ad(p.round_id, u, self.client_id))
            if len(pt) != SHARE_PLAINTEXT_BYTES or pt[:16] != struct.pack(">QQ", u, self.client_id):
                raise MalformedMessageError(f"share plaintext from {u} is malformed")
            held_b[u] = pt[16 : 16 + SHARE_BYTES]
            held_sk[u] = pt[16 + SHARE_BYTES :]
        if len(held_b) + 1 < p.threshold:
            raise self._abort(
                f"only {len(held_b) + 1} parties shared keys; threshold {p.threshold}"
            )
        dtype = p.word_dtype
        acc: np.ndarray = arr.astype(dtype, copy=True)
        ks = Keystream(p.dim, dtype)
        acc += ks.fill(self._b_u, self_label(p.round_id, self.client_id))
        u = self.client_id
        for v in sorted(held_b):
            mask = ks.fill(self._pair_seeds[v], pair_label(p.round_id, u, v))
            if u < v:
                acc += mask
            else:
                acc -= mask
        ks.release()
        acc &= dtype(p.modulus - 1)
        data = pack_reduced(acc, p.bits)
        acc.fill(0)
        own_b, own_sk = self._own_shares
        held_b[u] = own_b
        held_sk[u] = own_sk
        self._held_b, self._held_sk = held_b, held_sk
        self._b_u = b""  # its shares are all that is needed from now on
        self._c_dh = {}
        self._pair_seeds = {}
        self._stage = Stage.CONSISTENCY_CHECK if p.active else Stage.UNMASK
        return MaskedInput(p.round_id, u, data)

    # ------------------------------------------------------------------ round 3 / 4

    def _check_request(self, request: UnmaskRequest) -> tuple[set[int], set[int]]:
        p = self.params
        if not isinstance(request, UnmaskRequest):
            raise MalformedMessageError("expected an UnmaskRequest")
        if request.round_id != p.round_id:
            raise RoundMismatchError(f"request is for round {request.round_id}, not {p.round_id}")
        survivors, dropped = set(request.survivors), set(request.dropped)
        outsiders = sorted(c for c in survivors | dropped if not p.is_participant(c))
        if outsiders:
            raise NotParticipantError(f"request names non-participants {outsiders[:10]}")
        both = survivors & dropped
        if both:
            raise RefusedError(f"peers {sorted(both)[:10]} are listed as survivors and dropped")
        if self.client_id not in survivors:
            raise RefusedError(
                f"client {self.client_id} sent its masked input but is not a survivor"
            )
        if len(survivors) < p.threshold:
            raise RefusedError(f"only {len(survivors)} survivors for threshold {p.threshold}")
        if len(survivors) < p.min_survivors:
            raise RefusedError(
                f"only {len(survivors)} survivors; this round needs {p.min_survivors}"
            )
        return survivors, dropped

    def consistency_check(self, request: UnmaskRequest) -> ConsistencyCheck:
        """Active mode: sign the survivor set the server announced."""
        self._expect(Stage.CONSISTENCY_CHECK)
        self._check_request(request)
        if self._signing_key is None:
            raise StageError("consistency check needs a signing key (active mode only)")
        sig = ed25519_sign(
            self._signing_key,
            consistency_message(self.params.round_id, self.client_id, request.survivors),
        )
        self._signed_survivors = request.survivors
        self._stage = Stage.UNMASK
        return ConsistencyCheck(self.params.round_id, self.client_id, sig)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Reveal b-shares of surviving peers and s^SK-shares of dropped peers.

        Refuses (:class:`RefusedError`, a ProtocolError) a peer in both sets, a request
        that contradicts what the client knows, fewer than t survivors, or a request
        that would reveal, together with anything revealed before, both kinds of share
        of one peer. May be called again (a retransmitted request) under the same rules.
        """
        self._expect(Stage.UNMASK, Stage.DONE)
        p = self.params
        survivors, dropped = self._check_request(request)
        held = set(self._held_b)
        unaccounted = sorted(c for c in held if c not in survivors and c not in dropped)
        if unaccounted:
            raise RefusedError(f"neighbours {unaccounted[:10]} shared keys but are in neither set")
        if p.active:
            if self._signed_survivors is None or request.survivors != self._signed_survivors:
                raise RefusedError("survivor set differs from the one this client signed")
            sigs = request.signatures or {}
            valid = 0
            for signer, sig in sigs.items():
                if signer not in survivors or p.identity_keys is None:
                    raise RefusedError(f"consistency signature from non-survivor {signer}")
                ed25519_verify(
                    p.identity_keys[signer],
                    sig,
                    consistency_message(p.round_id, signer, request.survivors),
                )
                valid += 1
            if valid < p.threshold:
                raise RefusedError(
                    f"only {valid} consistency signatures for threshold {p.threshold}"
                )
        want_b = held & survivors
        want_sk = (held & dropped) - {self.client_id}
        conflict = sorted((want_b & self._revealed_sk) | (want_sk & self._revealed_b))
        if conflict:
            raise RefusedError(f"would reveal both shares of peers {conflict[:10]}")
        self._revealed_b |= want_b
        self._revealed_sk |= want_sk
        self._stage = Stage.DONE
        return UnmaskShares(
            p.round_id,
            self.client_id,
            {c: self._held_b[c] for c in sorted(want_b)},
            {c: self._held_sk[c] for c in sorted(want_sk)},
        )
