"""The device's side of a round, written once: check the round, encode, run the protocol.

Every transport drives this class: the HTTP device (:mod:`clients.device`) turns the
server's JSON into the typed messages below, the in-process and Ray engines
(:mod:`clients.engines`) hand the messages over directly. Training is separate
(:mod:`clients.training`) because engines batch it.

Threat model. The server is honest-but-curious, or with ``active`` rounds may lie about
who survived. The device checks what the server tells it before it trusts it: the
encoding plan against the secagg parameters (the noise share must be sized for at least
as many contributors as the round can be unmasked with), and the round against the
device's local :class:`secagg.ClientPolicy` where one is given (threshold, cohort, graph,
bits). The :class:`secagg.ClientProtocol` refuses to reveal both shares of any peer.
The device never sends its update, its norm or whether it was clipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dp import Encoder, EncodingPlan
from secagg import (
    AdvertiseKeys,
    ClientProtocol,
    ConsistencyCheck,
    MaskedInput,
    RoundParams,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)

__all__ = ["DeviceRound", "RoundRefused"]


class RoundRefused(ValueError):
    """The device will not take part: the round breaks its checks or its policy."""


class DeviceRound:
    """One device's part of one secure-aggregation round, without any I/O.

    Args:
        params: the round's secagg parameters (from the server).
        plan: the round's DP encoding plan (from the server; recomputed and checked by
            ``EncodingPlan.from_dict`` on the device).
        device_id: this device.
        signing_key: the device's Ed25519 identity (active mode signs with it).
        policy: the device's local ``secagg.ClientPolicy`` (None: protocol defaults).
        pinned_identity_keys: identity keys this device learned independently of the
            round (active mode verifies peers' signatures against these, not against
            the list the round hands over).
        random_bytes: the OS CSPRNG (injected for tests).
    """

    def __init__(
        self,
        params: RoundParams,
        plan: EncodingPlan,
        device_id: int,
        *,
        signing_key: Any = None,
        policy: Any = None,
        pinned_identity_keys: Mapping[int, bytes] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if int(plan.encoded_dim) != int(params.dim):
            raise RoundRefused(
                f"encoding plan length {plan.encoded_dim} != secagg dim {params.dim}"
            )
        if device_id not in params.participants:
            raise RoundRefused(
                f"device {device_id} is not a participant of round {params.round_id}"
            )
        if int(plan.min_contributors) > int(params.min_survivors):
            # The share is sized for min_contributors shares, but the protocol would let
            # the round be unmasked with fewer: the summed noise could fall short.
            raise RoundRefused(
                f"noise shares sized for {plan.min_contributors} contributors, but the "
                f"round may be unmasked with {params.min_survivors}"
            )
        if int(plan.n_clients) != len(params.participants):
            raise RoundRefused(
                f"encoding plan for {plan.n_clients} devices, round has {len(params.participants)}"
            )
        # The noise share is sized for min_contributors - corrupt honest shares: a plan
        # that assumes fewer colluders than this device does would make its share too small.
        from dp import corrupt_count
        from secagg.policy import ClientPolicy

        own = policy if policy is not None else ClientPolicy()
        needed = corrupt_count(float(own.corrupt), len(params.participants))
        if plan.config.mechanism != "none" and int(getattr(plan, "corrupt", 0)) < needed:
            raise RoundRefused(
                f"noise shares sized for {getattr(plan, 'corrupt', 0)} colluding devices; this "
                f"device assumes up to {needed} (corrupt fraction {own.corrupt})"
            )
        self.params = params
        self.plan = plan
        self.device_id = device_id
        kwargs: dict[str, Any] = {}
        if policy is not None:
            kwargs["policy"] = policy
        if pinned_identity_keys is not None:
            kwargs["pinned_identity_keys"] = pinned_identity_keys
        try:
            self.protocol = ClientProtocol(
                params,
                device_id,
                signing_key=signing_key if params.active else None,
                random_bytes=random_bytes,
                **kwargs,
            )
        except ValueError as err:
            raise RoundRefused(str(err)) from err
        self.encoded: np.ndarray | None = None

    @property
    def round_id(self) -> int:
        return int(self.params.round_id)

    def encoder(self, rotation_seed: bytes) -> Encoder:
        return Encoder(self.plan, rotation_seed)

    def encode(
        self, delta: np.ndarray, rotation_seed: bytes, rng: Any,
        evaluation: Any = None,
    ) -> np.ndarray:
        """Clip, rotate, quantize and noise the update into Z_{2^b}; kept for masking.
        With federated evaluation in the plan, ``evaluation`` is this device's
        (accuracy, examples, loss sum) on its held-out split, encoded with its own noise."""
        encoded, _report = self.encoder(rotation_seed).encode(delta, rng, evaluation)
        self.set_encoded(encoded)
        return self.encoded  # type: ignore[return-value]

    def set_encoded(self, encoded: np.ndarray) -> None:
        """Use an encoding made elsewhere (a batched encoder) as this device's input."""
        arr = np.asarray(encoded, dtype=np.uint64)
        if arr.shape != (int(self.params.dim),):
            raise ValueError(
                f"encoded update has shape {arr.shape}, round needs ({self.params.dim},)"
            )
        self.encoded = arr

    # -- protocol steps (pure)
    def advertise(self) -> AdvertiseKeys:
        return self.protocol.advertise_keys()

    def share(self, keys: Mapping[int, AdvertiseKeys]) -> ShareKeys:
        return self.protocol.share_keys(keys)

    def masked(self, ciphertexts: Mapping[int, bytes]) -> MaskedInput:
        if self.encoded is None:
            raise RoundRefused("no encoded update to mask")
        return self.protocol.masked_input(ciphertexts, self.encoded)

    def consistency(self, request: UnmaskRequest) -> ConsistencyCheck:
        return self.protocol.consistency_check(request)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        return self.protocol.unmask(request)
