"""Client-level distributed differential privacy for secure aggregation.

Device: `Encoder` (clip, rotate, scale, round, add a noise share, wrap mod 2^b), with
every secret draw from a `SecureRng` (AES-256-CTR keyed from the OS CSPRNG).
Server: `Decoder` (unwrap, unscale, unrotate) and `PrivacyAccountant` (epsilon over
rounds, charged with what the survivors' noise actually guaranteed). See
`dp.encoding` and `dp.accounting` for the papers and the guarantees.
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
