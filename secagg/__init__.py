"""Secure aggregation with double masking (Bonawitz et al., CCS 2017) and sparse
Harary neighbour graphs (Bell et al., CCS 2020, SecAgg+).

Threat model: an honest-but-curious server colluding with fewer than ``t`` of any
client's share holders learns only the sum (mod 2^b) of at least ``t`` inputs; with
``active=True`` signatures and the ConsistencyCheck round stop the server from showing
different survivor sets to different clients. Dropouts at any stage are tolerated as
long as ``t`` survive; otherwise the round aborts and reveals nothing.

Public API (binding, see CONTRACT.md): :class:`RoundParams`, :class:`ClientProtocol`,
:class:`AggregatorProtocol`, :class:`Stage`, the message classes, the errors,
:func:`pack` / :func:`unpack` / :func:`packed_size`, :func:`find_harary_params`,
:class:`ClientPolicy` (a device's local limits on the rounds it joins),
:func:`run_round` / :class:`RoundResult` and :class:`ProtocolConfig`.
"""

from secagg.aggregator import AggregatorProtocol
from secagg.client import ClientProtocol
from secagg.config import ProtocolConfig
from secagg.errors import (
    AbortError,
    DuplicateMessageError,
    MalformedMessageError,
    NotParticipantError,
    PolicyError,
    ProtocolError,
    RefusedError,
    RoundMismatchError,
    SecAggError,
    SignatureError,
    StageError,
)
from secagg.graph import find_harary_params
from secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.packing import pack, packed_size, unpack
from secagg.params import RoundParams
from secagg.policy import ClientPolicy
from secagg.runner import RoundResult, run_round
from secagg.stage import Stage

__all__ = [
    "AbortError",
    "AdvertiseKeys",
    "AggregatorProtocol",
    "ClientPolicy",
    "ClientProtocol",
    "ConsistencyCheck",
    "DuplicateMessageError",
    "MalformedMessageError",
    "MaskedInput",
    "NotParticipantError",
    "PolicyError",
    "ProtocolConfig",
    "ProtocolError",
    "RefusedError",
    "RoundMismatchError",
    "RoundParams",
    "RoundResult",
    "SecAggError",
    "ShareKeys",
    "SignatureError",
    "Stage",
    "StageError",
    "UnmaskRequest",
    "UnmaskShares",
    "find_harary_params",
    "pack",
    "packed_size",
    "run_round",
    "unpack",
]
