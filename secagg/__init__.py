"""Secure aggregation with double masking (Bonawitz et al., CCS 2017) and sparse
Harary neighbour graphs (Bell et al., CCS 2020, SecAgg+).

Threat model: an honest-but-curious server colluding with fewer than ``t`` of any
client's share holders learns only the sum (mod 2^b) of at least ``t`` inputs; with
``active=True`` signatures and the ConsistencyCheck round stop the server from showing
different survivor sets to different clients. Dropouts at any stage are tolerated as
long as ``t`` survive; otherwise the round aborts and reveals nothing.

Public API (the names below; reference pages: ``make docs``, and the README's "Python
API"): :class:`RoundParams`, :class:`ClientProtocol`, :class:`AggregatorProtocol`,
:class:`Stage`, the message classes, the errors, :func:`pack` / :func:`unpack` /
:func:`packed_size`, :func:`find_harary_params`, :class:`ClientPolicy` (a device's local
limits on the rounds it joins), :func:`run_round` / :class:`RoundResult` and
:class:`ProtocolConfig`.

One secure round in process: :meth:`RoundParams.create` picks the neighbour graph's
degree k and the threshold t for the stated dropout and corrupt fractions (and draws the
graph seed from the OS CSPRNG); :func:`run_round` drives every client's
:class:`ClientProtocol` and the :class:`AggregatorProtocol` through the stages with a
dropout schedule and returns the survivors' exact sum mod 2^bits (or raises
:class:`AbortError`, revealing nothing, when fewer than t survive):

```python
import numpy as np

from secagg import RoundParams, Stage, run_round

params = RoundParams.create(0, range(20), 1000, 16, graph="harary", dropout=0.1, corrupt=0.1)
inputs = {c: np.full(1000, c, dtype=np.uint64) for c in params.participants}
result = run_round(params, inputs, dropouts={4: Stage.MASKED_INPUT})  # device 4 vanishes
print(int(result.sum[0]) == sum(result.survivors) % 2**16)  # True: the survivors' exact sum
print(params.degree, params.threshold, len(result.survivors))
```

Over a network the same objects exchange the same messages: ``server.round`` holds the
aggregator's side, ``clients.round`` a device's.
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
