"""Client-level distributed differential privacy for secure aggregation.

Device: `Encoder` (clip, rotate, scale, round, add a noise share, wrap mod 2^b), with
every secret draw from a `SecureRng` (AES-256-CTR keyed from the OS CSPRNG).
Server: `Decoder` (unwrap, unscale, unrotate) and `PrivacyAccountant` (epsilon over
rounds, charged with what the survivors' noise actually guaranteed). See
`dp.encoding` and `dp.accounting` for the papers and the guarantees.

`EncodingPlan.create(config, dim, n_clients, min_contributors, corrupt)` fixes one
round's scale gamma and each device's noise share, sized so that any
`min_contributors` - `corrupt` honest shares carry the target noise z C;
`plan.privacy_event(n_survivors)` is what a round with that many survivors guaranteed,
and the accountant composes those events:

```python
import os

import numpy as np

from dp import DPConfig, Decoder, Encoder, EncodingPlan, PrivacyAccountant, SecureRng

config = DPConfig(mechanism="skellam", noise_multiplier=1.0, clip=1.0, bits=16)
plan = EncodingPlan.create(config, dim=300, n_clients=10, min_contributors=8)
seed = os.urandom(32)  # the round's public rotation seed
updates = [np.random.default_rng(i).normal(0, 0.02, 300) for i in range(10)]
encoded = [Encoder(plan, seed).encode(u, SecureRng.from_os())[0] for u in updates]
total = np.sum(encoded, axis=0) % plan.modulus  # what the secure sum outputs
mean = Decoder(plan, seed).decode(total, n_survivors=10).total / 10
accountant = PrivacyAccountant(config, sample_rate=1.0)
accountant.compose(plan.privacy_event(10), count=50)  # 50 such rounds
print(np.linalg.norm(mean - np.mean(updates, axis=0)), accountant.report().epsilon)
```

Planning without running: `epsilon_report` / `epsilon_for` give both figures of a run
with given parameters (`survivors`: how many shares survive each round, default the
worst case t) and `calibrate_noise` the smallest z that meets a target; `python -m dp
epsilon|calibrate` prints them.
"""

from dp.accounting import (
    ACCOUNTANTS,
    ADD_REMOVE,
    REPLACE_ONE,
    ZERO_OUT,
    EpsilonReport,
    PrivacyAccountant,
    calibrate_noise,
    corrupt_count,
    epsilon_amplified_approx,
    epsilon_for,
    epsilon_report,
    subsampled_rdp,
    wbk_subsampled_rdp,
)
from dp.config import (
    FINE_RDP_ORDERS,
    INTEGER_RDP_ORDERS,
    RDP_ORDERS,
    SAMPLINGS,
    DPConfig,
    DPConfigError,
)
from dp.encoding import (
    DecodedSum,
    Decoder,
    Encoder,
    EncodeReport,
    EncodingPlan,
    RoundPrivacy,
    rounding_bias_bound,
    update_clip,
)
from dp.mechanisms import MECHANISM_REGISTRY, NoiseMechanism, accounting_note, get_mechanism
from dp.prng import SecureRng

__all__ = [
    "ACCOUNTANTS",
    "ADD_REMOVE",
    "FINE_RDP_ORDERS",
    "REPLACE_ONE",
    "SAMPLINGS",
    "ZERO_OUT",
    "corrupt_count",
    "rounding_bias_bound",
    "wbk_subsampled_rdp",
    "DPConfig",
    "DPConfigError",
    "DecodedSum",
    "Decoder",
    "EncodeReport",
    "Encoder",
    "EncodingPlan",
    "EpsilonReport",
    "INTEGER_RDP_ORDERS",
    "MECHANISM_REGISTRY",
    "NoiseMechanism",
    "PrivacyAccountant",
    "RDP_ORDERS",
    "RoundPrivacy",
    "SecureRng",
    "accounting_note",
    "calibrate_noise",
    "epsilon_amplified_approx",
    "epsilon_for",
    "epsilon_report",
    "get_mechanism",
    "subsampled_rdp",
    "update_clip",
]
