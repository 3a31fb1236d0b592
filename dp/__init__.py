"""Client-level distributed differential privacy for secure aggregation.

Device: `Encoder` (clip, rotate, scale, round, add a noise share, wrap mod 2^b).
Server: `Decoder` (unwrap, unscale, unrotate) and `PrivacyAccountant` (epsilon over
rounds, charged with what the survivors' noise actually guaranteed). See
`dp.encoding` and `dp.accounting` for the papers and the guarantees.
"""

from dp.accounting import (
    ACCOUNTANTS,
    EpsilonReport,
    PrivacyAccountant,
    calibrate_noise,
    epsilon_for,
    epsilon_report,
    subsampled_rdp,
)
from dp.config import INTEGER_RDP_ORDERS, RDP_ORDERS, DPConfig, DPConfigError
from dp.encoding import (
    DecodedSum,
    Decoder,
    Encoder,
    EncodeReport,
    EncodingPlan,
    RoundPrivacy,
    update_clip,
)
from dp.mechanisms import MECHANISM_REGISTRY, NoiseMechanism, accounting_note, get_mechanism

__all__ = [
    "ACCOUNTANTS",
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
    "accounting_note",
    "calibrate_noise",
    "epsilon_for",
    "epsilon_report",
    "get_mechanism",
    "subsampled_rdp",
    "update_clip",
]
