"""EncodingPlan.create, the round's privacy record and mechanism look-up at their edges
(issue 16: the last survivors of dp/encoding.py and dp/mechanisms.py).

Each plan is checked whole against `ref_plan` (the published rules, written out in
tests/dp/test_mutation_encoding.py); the edges are the ones a real input reaches:
- the largest cohort a modulus holds (2^b > 2k sqrt(n/4), hit exactly with k = 4);
- "none" and a zero noise multiplier: no room reserved, no share asked of a mechanism;
- the discrete scale rounded up (gamma grows until k std fit), and never fitting;
- the rounded Gaussian at exactly its minimum local std;
- the round's record and its RDP with a Skellam evaluation block (L1 = 4m);
- the near-wrap limit (a Chernoff bound) at other planned wrap rates;
- bad counts refused with the field and the value.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from dp import DPConfig, DPConfigError, EncodingPlan, RoundPrivacy
from dp.mechanisms import (
    MECHANISM_REGISTRY,
    NoiseMechanism,
    get_mechanism,
    register_mechanism,
    skellam_rdp,
)
from tests.dp.test_mutation_encoding import (
    _in_time,
    assert_plan_matches,
    assert_wrap_flagged_from_the_limit,
    ref_plan,
)

#: modclip_prob = 2 e^-8 gives k = sqrt(2 ln(2/p)) = 4.0 to the last bit.
K4_MODCLIP = 2.0 * math.exp(-8.0)


# ------------------------------------------------------------------ bad counts


@pytest.mark.parametrize(
    "args,match",
    [
        ((True, 10, 8, 0), "dim must be an integer >= 1, got True"),
        ((2.5, 10, 8, 0), "dim must be an integer >= 1, got 2.5"),
        ((0, 10, 8, 0), "dim must be an integer >= 1, got 0"),
        ((16, True, 1, 0), "n_clients must be an integer >= 1, got True"),
        ((16, 10.0, 8, 0), "n_clients must be an integer >= 1, got 10.0"),
        ((16, 10, 8, True), "corrupt must be an integer >= 0, got True"),
        ((16, 10, 8, 1.5), "corrupt must be an integer >= 0, got 1.5"),
        ((16, 10, 8, -1), "corrupt must be an integer >= 0, got -1"),
        (
            (16, 10, True, 0),
            r"min_contributors must be an integer in \[1, n_clients=10\], got True",
        ),
        ((16, 10, 8.0, 0), r"min_contributors must be an integer in \[1, n_clients=10\], got 8.0"),
        ((16, 10, 11, 0), r"min_contributors must be an integer in \[1, n_clients=10\], got 11"),
        ((16, 10, 2, 2), "min_contributors=2 survivors minus corrupt=2 colluders leaves 0; "),
        ((16, 10, 3, 5), "min_contributors=3 survivors minus corrupt=5 colluders leaves -2; "),
    ],
)
def test_create_refuses_bad_counts_naming_the_field_and_value(args: tuple, match: str) -> None:
    with pytest.raises(DPConfigError, match=match):
        EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=16), *args)


# ------------------------------------------------------- what the modulus holds


def test_the_modulus_holds_fewer_than_4_half_over_k_squared_clients() -> None:
    """2^b = 2k sqrt(sum variance) needs (2^(b-1)/k)^2 > n/4 even without data or noise: at
    k = 4 and 8 bits, n = 4 * 32^2 = 4096 leaves no room at all (refused cleanly, not a
    division by zero) and 4095 leaves a quarter of a unit (planned)."""
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=8, modclip_prob=K4_MODCLIP)
    assert (2.0**7 / math.sqrt(2.0 * math.log(2.0 / K4_MODCLIP))) ** 2 == 4096 / 4
    plan = EncodingPlan.create(cfg, 8, 4095, 4095)
    assert plan.k_stddevs == 4.0
    assert_plan_matches(plan, ref_plan(cfg, 8, 4095, 4095))
    with pytest.raises(
        DPConfigError,
        match=r"^bits=8 too small for 4096 clients: need 2\^b > "
        r"2k sqrt\(n/4\) with k=4.00 \(modclip_prob=",
    ):
        EncodingPlan.create(cfg, 8, 4096, 4096)


# --------------------------------------------------- no noise: nothing reserved


def test_no_noise_mechanism_reserves_no_room_for_noise() -> None:
    """Mechanism "none" adds nothing whatever the noise multiplier (1.0 by default): its gamma
    is the noise-free one, not one sized for noise that is never added."""
    plain = DPConfig(mechanism="none")
    zero = DPConfig(mechanism="none", noise_multiplier=0.0)
    plan = EncodingPlan.create(plain, 40, 10, 8)
    assert plain.noise_multiplier == 1.0
    assert_plan_matches(plan, ref_plan(plain, 40, 10, 8))
    assert plan.gamma == EncodingPlan.create(zero, 40, 10, 8).gamma
    assert plan.local_stddev == 0.0


class _Floored(NoiseMechanism):
    """A plug-in with a smallest scale of 1, like the discrete Gaussian's integer scale,
    but without its guard for a zero request."""

    name = "floored_mutation_plan"

    def local_scale(self, target_local_stddev: float) -> float:
        return float(max(1, math.ceil(target_local_stddev)))

    def add_noise(self, record, scale, l2_bound, l1_bound, rng):  # noqa: ANN001
        return np.asarray(record, dtype=np.int64)

    def rdp(self, orders, l2_sens, l1_sens, local_scale, n_shares, dim):  # noqa: ANN001
        return np.zeros(len(orders))


def test_a_zero_noise_multiplier_asks_no_mechanism_for_a_share() -> None:
    """z = 0 means no noise share at all: the plan does not ask the mechanism for the
    scale of a zero std (a plug-in may round any request up to its smallest scale)."""
    register_mechanism(_Floored)
    try:
        plans = {}
        for z in (0.0, 1e-3):
            cfg = DPConfig(mechanism=_Floored.name, noise_multiplier=z, bits=16)
            plans[z] = EncodingPlan.create(cfg, 16, 10, 10)
            assert_plan_matches(plans[z], ref_plan(cfg, 16, 10, 10))
    finally:
        MECHANISM_REGISTRY.pop(_Floored.name, None)
    assert plans[0.0].local_stddev == 0.0
    assert plans[1e-3].local_stddev == 1.0  # a real request is rounded up to the floor


# ------------------------------------------ the discrete scale rounded up: gamma grows


def _continuous_gamma(cfg: DPConfig, dim: int, n: int, t: int) -> float:
    k = math.sqrt(2 * math.log(2 / cfg.modclip_prob))
    half = 2.0 ** (cfg.bits - 1)
    sig = cfg.noise_multiplier * cfg.clip / math.sqrt(t)
    return math.sqrt(((cfg.clip * n) ** 2 / dim + n * sig**2) / ((half / k) ** 2 - n / 4))


@pytest.mark.parametrize("z,n", [(0.3, 200), (0.3, 50), (1.0, 50)])
def test_discrete_scale_rounded_up_grows_gamma_until_k_std_fit(z: float, n: int) -> None:
    """With 8 bits the discrete Gaussian's scale ceil(sigma_u / gamma) is small, so the
    rounding up is felt: gamma grows in 1 % steps until k std of the sum
    (data, rounding n/4, n shares) fit in 2^(b-1)."""
    cfg = DPConfig(mechanism="ddgauss", bits=8, noise_multiplier=z)
    plan = EncodingPlan.create(cfg, 8, n, n)
    assert_plan_matches(plan, ref_plan(cfg, 8, n, n))
    assert plan.gamma > 1.005 * _continuous_gamma(cfg, 8, n, n)  # it did grow


def test_shares_of_at_least_one_unit_that_never_fit_are_refused() -> None:
    """The discrete Gaussian's scale is at least 1: 1000 shares need k sqrt(n/4 + n) =
    4.45 * 35.4 > 128, whatever gamma; the Skellam's continuous scale fits the same
    cohort."""
    cfg = DPConfig(mechanism="ddgauss", bits=8)
    k = math.sqrt(2 * math.log(2 / cfg.modclip_prob))
    assert k * math.sqrt(1000 / 4) < 128 < k * math.sqrt(1000 * 1.25)
    err = _in_time(lambda: EncodingPlan.create(cfg, 8, 1000, 1000))[1]
    assert isinstance(err, DPConfigError)
    assert str(err) == "bits=8 too small for 1000 clients with this noise"
    sk = DPConfig(mechanism="skellam", bits=8)
    assert_plan_matches(EncodingPlan.create(sk, 8, 1000, 1000), ref_plan(sk, 8, 1000, 1000))


# -------------------------------------------- the rounded Gaussian's minimum std


def test_rounded_gaussian_at_exactly_its_minimum_local_std() -> None:
    """The rounded Gaussian's accounting holds for a local std >= 1 (`min_local_scale`):
    a plan at exactly 1.0 is made, one below is refused naming the std, the bits and
    the cohort. (z is chosen so that sigma_u / gamma is 1.0 to the last bit.)"""
    at = DPConfig(mechanism="gaussian", bits=12, noise_multiplier=0.9998307100645917)
    plan = EncodingPlan.create(at, 1024, 600, 600)
    assert plan.local_stddev == 1.0
    assert_plan_matches(plan, ref_plan(at, 1024, 600, 600))
    below = DPConfig(mechanism="gaussian", bits=12, noise_multiplier=0.9)
    local = ref_plan(below, 1024, 600, 600)["local_stddev"]
    assert 0.5 < local < 1.0
    with pytest.raises(
        DPConfigError,
        match=(
            f"^mechanism 'gaussian': local noise std {local:.3g} integer units is below 1 with "
            "bits=12 and 600 clients"
        ),
    ):
        EncodingPlan.create(below, 1024, 600, 600)


# ---------------------------------------------------- the round's privacy record


def _full_plan() -> EncodingPlan:
    cfg = DPConfig(
        mechanism="skellam", bits=16, noise_multiplier=1.0, eval_buckets=2, adaptive_clip=True
    )
    return EncodingPlan.create(cfg, 16, 1000, 800, 100)


def test_privacy_event_is_the_plans_record_and_its_rdp() -> None:
    """s survivors, c colluders: s - c honest shares; the update (Delta2, Delta1, padded
    dim), the count slot (m, m, 1 coordinate) and the evaluation block (2m, 4m,
    buckets + 3 coordinates), each charged with Skellam's RDP for its own noise."""
    plan = _full_plan()
    m, e = plan.count_scale, plan.eval_scale
    assert m > 1 and e > 1 and plan.corrupt == 100
    ev = plan.privacy_event(900)
    assert ev == RoundPrivacy(
        mechanism="skellam",
        n_shares=800,
        local_stddev=plan.local_stddev,
        l2_sensitivity=plan.l2_sensitivity,
        l1_sensitivity=plan.l1_sensitivity,
        dim=16,
        gamma=plan.gamma,
        clip=1.0,
        count_sensitivity=float(m),
        count_local_stddev=plan.count_local_stddev,
        corrupt=100,
        eval_sensitivity=2.0 * e,
        eval_local_stddev=plan.eval_local_stddev,
        eval_dim=5,
    )
    orders = [2.0, 3.0, 8.0, 32.0]
    want = (
        skellam_rdp(orders, plan.l2_sensitivity, plan.l1_sensitivity, 800 * plan.local_stddev**2)
        + skellam_rdp(orders, m, m, 800 * plan.count_local_stddev**2)
        + skellam_rdp(orders, 2 * e, 4 * e, 800 * plan.eval_local_stddev**2)
    )
    np.testing.assert_allclose(ev.rdp(orders), want, rtol=1e-12)
    assert plan.privacy_event(100).n_shares == 0  # only colluders: nothing honest


@pytest.mark.parametrize(
    "bad,match",
    [
        (0, "n_survivors must be an integer >= 1, got 0"),
        (-3, "n_survivors must be an integer >= 1, got -3"),
        (True, "n_survivors must be an integer >= 1, got True"),
        (2.5, "n_survivors must be an integer >= 1, got 2.5"),
        (1001, "n_survivors=1001 exceeds the 1000 devices of the plan"),
    ],
)
def test_privacy_event_refuses_a_bad_survivor_count(bad: object, match: str) -> None:
    with pytest.raises(DPConfigError, match=f"^{match}$"):
        _full_plan().privacy_event(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------ the near-wrap limit


@pytest.mark.parametrize("dim,rotation,modclip", [(64, "hadamard", 1e-3), (86, "dft", 1e-4)])
def test_near_wrap_limit_is_the_chernoff_bound_at_other_rates(
    dim: int, rotation: str, modclip: float
) -> None:
    """`DecodedSum.wrap_suspected`: flagged from the smallest count a of near-wrap
    coordinates with exp(-d KL(a/d || p)) <= 1e-6, p the planned rate erfc((k-1)/sqrt 2)."""
    cfg = DPConfig(
        mechanism="none", noise_multiplier=0.0, bits=16, rotation=rotation, modclip_prob=modclip
    )
    plan = EncodingPlan.create(cfg, dim, 2, 2)
    assert plan.padded_dim == dim
    assert_wrap_flagged_from_the_limit(plan, 11)


# ------------------------------------------------------------- mechanism look-up


def test_a_mechanism_name_that_is_not_a_string_is_refused_cleanly() -> None:
    """A config or a stored record from JSON may carry a list: a clear DPConfigError
    naming it, not a TypeError from a dict look-up."""
    with pytest.raises(
        DPConfigError,
        match=r"^mechanism: mechanism name must be a string, "
        r"got \['ddgauss'\]$",
    ):
        DPConfig(mechanism=["ddgauss"])  # type: ignore[arg-type]
    record = EncodingPlan.create(DPConfig(), 8, 4, 4).privacy_event(4).to_dict()
    with pytest.raises(DPConfigError, match=r"^mechanism name must be a string, got \['x'\]$"):
        RoundPrivacy.from_dict(dict(record, mechanism=["x"]))


def test_a_registered_mechanism_is_found_without_the_plugin_machinery() -> None:
    """`MechanismRegistry.resolve` imports `secagg.plugins` (and cryptography with it)
    only for a name that is not registered: a process that plans, encodes and accounts
    with the built-in mechanisms never loads it."""
    assert get_mechanism("skellam") is MECHANISM_REGISTRY["skellam"]
    code = (
        "import sys\n"
        "from dp import DPConfig, EncodingPlan\n"
        "from dp.mechanisms import get_mechanism\n"
        "for m in ('ddgauss', 'skellam', 'gaussian', 'none'):\n"
        "    assert get_mechanism(m).name == m\n"
        "    EncodingPlan.create(DPConfig(mechanism=m), 8, 4, 4).privacy_event(4).rdp([2.0])\n"
        "print('secagg.plugins' in sys.modules)\n"
        "try:\n"
        "    get_mechanism('laplace')\n"
        "except ValueError:\n"
        "    pass\n"
        "print('secagg.plugins' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True"]
