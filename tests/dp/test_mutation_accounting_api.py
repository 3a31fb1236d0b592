"""The accountant's public surface: what it accepts, what it refuses (and says), and the
figures it reports at the edges (issue 16: mutants of `PrivacyAccountant` and of the run
checks of `epsilon_for`/`epsilon_report` that every older test let through).

- Wrong types and out-of-range settings are refused with the bad value named and, for a
  choice, the valid choices listed; a refused `compose` charges nothing.
- Fixed-size sampling needs N even at q = 1; one device a round (k = 1) is a valid run.
- The PLD accountant: mechanism "none" allowed (infinite epsilon), no refusal at q = 1,
  the amplified figure refused (infinite, with the reason) at q < 1 even before any round.
- A round with no noise (z = 0) makes every figure infinite, after earlier noisy rounds.
- The report names the run it describes; N = k / q is inferred up to float rounding
  (N = 10^6); sampling parameters that disagree are refused naming the numbers.
- The add/remove approximation sums every entry of the ledger (composed by hand).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from dp import (
    INTEGER_RDP_ORDERS,
    REPLACE_ONE,
    ZERO_OUT,
    DPConfig,
    DPConfigError,
    EncodingPlan,
    EpsilonReport,
    PrivacyAccountant,
    corrupt_count,
    epsilon_for,
    epsilon_report,
    subsampled_rdp,
)
from tests.matching import exact as _exact


def _gaussian(z: float = 1.0, k: int = 10, delta: float = 1e-5):
    config = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=40, delta=delta)
    return config, EncodingPlan.create(config, 100, k, k).privacy_event(k)


# ------------------------------------------------------------------ refusals


def test_wrong_types_are_refused_naming_what_was_given() -> None:
    config, event = _gaussian()
    with pytest.raises(TypeError, match=_exact("config must be a DPConfig, got dict")):
        PrivacyAccountant(config.to_dict(), 1.0)  # type: ignore[arg-type]
    acc = PrivacyAccountant(config, 1.0)
    with pytest.raises(TypeError, match=_exact("event must be a RoundPrivacy, got dict")):
        acc.compose(event.to_dict())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=_exact("event must be a RoundPrivacy, got NoneType")):
        acc.would_exceed(None, 1.0)  # type: ignore[arg-type]
    assert acc.rounds == 0 and acc.ledger == ()


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, "2"])
def test_compose_refuses_a_bad_count_and_charges_nothing(bad: object) -> None:
    config, event = _gaussian()
    acc = PrivacyAccountant(config, 1.0)
    acc.compose(event)
    before = acc.report()
    with pytest.raises(ValueError, match=_exact(f"count must be an integer >= 1, got {bad!r}")):
        acc.compose(event, bad)  # type: ignore[arg-type]
    assert acc.rounds == 1 and acc.ledger == ((event, 1, None),)
    assert acc.report() == before


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(accountant="moments"), "accountant must be one of rdp, pld, got 'moments'"),
        (dict(sampling="uniform"), "sampling must be one of poisson, fixed, got 'uniform'"),
        (dict(sample_rate=0.0), "sample rate must be in (0, 1], got 0.0"),
        (dict(sample_rate=0), "sample rate must be in (0, 1], got 0"),
        (dict(sample_rate=True), "sample rate must be in (0, 1], got True"),
        (dict(sample_rate="0.5"), "sample rate must be in (0, 1], got '0.5'"),
        (dict(sample_rate=1.5), "sample rate must be in (0, 1], got 1.5"),
        (dict(corrupt_fraction=False), "corrupt fraction must be in [0, 1), got False"),
        (dict(corrupt_fraction="0.1"), "corrupt fraction must be in [0, 1), got '0.1'"),
        (dict(corrupt_fraction=1.0), "corrupt fraction must be in [0, 1), got 1.0"),
        (dict(corrupt_fraction=-0.1), "corrupt fraction must be in [0, 1), got -0.1"),
    ],
)
def test_bad_accountant_settings_are_refused_naming_value_and_choices(
    kwargs: dict, msg: str
) -> None:
    args = dict(sample_rate=0.1, population=1000)
    args.update(kwargs)
    rate = args.pop("sample_rate")
    with pytest.raises(DPConfigError, match=_exact(msg)):
        PrivacyAccountant(_gaussian()[0], rate, **args)


@pytest.mark.parametrize("bad", [False, True, "0.1"])
def test_corrupt_count_refuses_a_fraction_that_is_not_a_number(bad: object) -> None:
    with pytest.raises(
        DPConfigError, match=_exact(f"corrupt fraction must be in [0, 1), got {bad!r}")
    ):
        corrupt_count(bad, 10)  # type: ignore[arg-type]


# ------------------------------------------------------------------ sampling settings

_NEEDS_N_FIXED = (
    "fixed-size sampling needs the population N (the number of devices the k per round are "
    "drawn from)"
)


def test_fixed_size_sampling_needs_the_population_even_at_rate_one() -> None:
    config, event = _gaussian()
    with pytest.raises(DPConfigError, match=_exact(_NEEDS_N_FIXED)):
        PrivacyAccountant(config, 1.0, sampling="fixed")
    with pytest.raises(DPConfigError, match=_exact(_NEEDS_N_FIXED)):
        epsilon_report(
            "gaussian", 1.0, 1.0, 2, 1e-5, clients_per_round=10, dim=100, sampling="fixed"
        )
    # all N = k devices every round: accepted, nothing amplified
    acc = PrivacyAccountant(config, 1.0, sampling="fixed", population=10)
    assert acc.sample_size == 10
    acc.compose(event, 2)
    rep = acc.report()
    assert rep.epsilon_amplified == rep.epsilon and rep.adjacency_amplified == ZERO_OUT
    assert rep == epsilon_report(
        "gaussian",
        1.0,
        1.0,
        2,
        1e-5,
        bits=40,
        dim=100,
        clients_per_round=10,
        sampling="fixed",
        population=10,
    )


def test_one_device_a_round_under_fixed_size_sampling() -> None:
    """k = q N = 1 is the smallest valid cohort: accepted and charged, and amplified."""
    config, event = _gaussian(k=1)
    acc = PrivacyAccountant(config, 0.01, sampling="fixed", population=100)
    assert acc.sample_size == 1
    acc.compose(event, 3)
    assert acc.ledger == ((event, 3, 1),)
    rep = acc.report()
    assert 0 < rep.epsilon_amplified < rep.epsilon < math.inf


def test_sampling_parameters_that_disagree_are_refused_naming_the_numbers() -> None:
    # fixed: 10 of 100 is rate 0.1, not 0.11 (q N = 11: a whole cohort off)
    with pytest.raises(
        DPConfigError,
        match=_exact("fixed-size sampling of 10 of 100 devices needs sample rate 0.1, got 0.11"),
    ):
        epsilon_for(
            "gaussian",
            1.0,
            0.11,
            2,
            1e-5,
            clients_per_round=10,
            dim=100,
            sampling="fixed",
            population=100,
        )
    # Poisson: q N = 100 devices expected, the run says 101
    with pytest.raises(
        DPConfigError,
        match="^"
        + re.escape(
            "Poisson sampling at q = 0.1 of N = 1000 devices expects 100 devices per round "
            "(q N), not 101: "
        ),
    ):
        epsilon_for("gaussian", 1.0, 0.1, 2, 1e-5, clients_per_round=101, dim=100, population=1000)
    with pytest.raises(DPConfigError, match=_exact("clip must be > 0, got 0.0")):
        epsilon_for("gaussian", 1.0, 1.0, 2, 1e-5, clients_per_round=10, dim=100, clip=0.0)


def test_the_population_is_inferred_up_to_float_rounding() -> None:
    """q = 1e-5 and k = 10: k / q is 999999.9999999999 in floating point, N = 10^6."""
    assert 10 / 1e-5 != 1_000_000  # the rounding this test is about
    rep = epsilon_report("gaussian", 1.0, 1e-5, 2, 1e-5, bits=40, dim=100, clients_per_round=10)
    assert rep.population == 1_000_000
    config, event = _gaussian()
    acc = PrivacyAccountant(config, 1e-5, population=1_000_000)
    acc.compose(event, 2, cohort=10)
    assert rep == acc.report()


# ------------------------------------------------------------------ the PLD accountant


def test_pld_accountant_figures_at_the_edges() -> None:
    # mechanism "none" is allowed (no guarantee to compute): both figures infinite
    none = DPConfig(mechanism="none")
    acc = PrivacyAccountant(none, 1.0, "pld")
    acc.compose(EncodingPlan.create(none, 100, 10, 10).privacy_event(10), 2)
    assert (acc.report().epsilon, acc.report().epsilon_amplified) == (math.inf, math.inf)
    assert acc.rounds == 2

    config, event = _gaussian(2.0)
    # q = 1: nothing is sampled, the amplified figure is the unamplified one; not refused
    whole = PrivacyAccountant(config, 1.0, "pld")
    whole.compose(event, 3)
    rep = whole.report()
    assert rep.amplified_refused is None
    assert 0 < rep.epsilon == rep.epsilon_amplified < math.inf

    # q < 1: refused (infinite, with the reason), from the first report on
    sampled = PrivacyAccountant(config, 0.1, "pld", population=100)
    rep = sampled.report()
    assert (rep.epsilon, rep.epsilon_amplified) == (0.0, math.inf)
    assert rep.amplified_refused is not None and "accountant 'rdp'" in rep.amplified_refused
    sampled.compose(event, 3, cohort=10)
    rep = sampled.report()
    assert rep.epsilon_amplified == math.inf
    assert rep.epsilon == whole.report().epsilon  # the unamplified figure ignores q


# ------------------------------------------------------------------ figures


@pytest.mark.parametrize("rate,population,cohort", [(1.0, None, None), (0.1, 1000, 10)])
def test_a_round_without_noise_makes_every_figure_infinite(
    rate: float, population: int | None, cohort: int | None
) -> None:
    config, event = _gaussian(1.0)
    acc = PrivacyAccountant(config, rate, population=population)
    acc.compose(event, 2, cohort=cohort)
    assert math.isfinite(acc.report().epsilon_amplified)
    # z = 0: a Gaussian configured without noise
    silent = _gaussian(0.0)[1]
    assert silent.gaussian_noise_multiplier == 0.0
    assert acc.would_exceed(silent, 1e6, cohort=cohort, amplified=cohort is not None)
    acc.compose(silent, cohort=cohort)
    rep = acc.report()
    assert (rep.epsilon, rep.epsilon_amplified, rep.rounds) == (math.inf, math.inf, 3)
    assert acc.epsilon_amplified_approx() == math.inf
    # and the same when the silent round is the only one
    alone = PrivacyAccountant(config, rate, population=population)
    alone.compose(silent, cohort=cohort)
    assert (alone.report().epsilon, alone.report().epsilon_amplified) == (math.inf, math.inf)


def test_the_report_names_the_run_it_describes() -> None:
    config = DPConfig(mechanism="skellam", noise_multiplier=1.2, bits=14, delta=1e-6)
    event = EncodingPlan.create(config, 200, 10, 10, corrupt=1).privacy_event(10)
    acc = PrivacyAccountant(config, 0.1, sampling="fixed", population=100, corrupt_fraction=0.1)
    acc.compose(event, 2)
    rep = acc.report()
    assert 0 < rep.epsilon < math.inf and 0 < rep.epsilon_amplified < math.inf
    assert rep == EpsilonReport(
        epsilon=rep.epsilon,
        epsilon_amplified=rep.epsilon_amplified,
        delta=1e-6,
        rounds=2,
        mechanism="skellam",
        accountant="rdp",
        sample_rate=0.1,
        sampling="fixed",
        population=100,
        corrupt_fraction=0.1,
        adjacency=ZERO_OUT,
        adjacency_amplified=REPLACE_ONE,
        amplified_refused=None,
    )


def test_add_remove_approximation_sums_every_ledger_entry() -> None:
    """Two different events (10 and 8 survivors), composed 2 and 1 times: the figure is the
    Zhu-Wang subsampled RDP of each, summed with its count, converted at delta."""
    config = DPConfig(mechanism="skellam", noise_multiplier=1.0, bits=14, delta=1e-5)
    plan = EncodingPlan.create(config, 200, 10, 8)
    first, second = plan.privacy_event(10), plan.privacy_event(8)
    assert first != second
    acc = PrivacyAccountant(config, 0.1, population=100)
    acc.compose(first, 2, cohort=10)
    acc.compose(second, 1, cohort=9)
    orders = np.arange(2, INTEGER_RDP_ORDERS[-1] + 1)
    rdp = 2 * subsampled_rdp(first.rdp(orders), 0.1, INTEGER_RDP_ORDERS) + subsampled_rdp(
        second.rdp(orders), 0.1, INTEGER_RDP_ORDERS
    )
    expected = compute_epsilon(list(INTEGER_RDP_ORDERS), rdp.tolist(), 1e-5)[0]
    assert acc.epsilon_amplified_approx() == pytest.approx(expected, rel=1e-12)
    last_only = PrivacyAccountant(config, 0.1, population=100)
    last_only.compose(second, 1, cohort=9)
    assert last_only.epsilon_amplified_approx() < 0.9 * expected
