"""Tests that close the gaps mutation testing found in dp/ (issue 16).

- Clipping at C < 1 and at norms close to C: a clip decided on the squared norm, or a
  scale by C / ||x||^2, passes tests whose norms sit far on either side of C = 1.
- ε of the discrete mechanisms at several δ against the reference formulas of
  REFERENCES.md (Kairouz-Liu-Steinke Prop. 14 / Eq. 17; Agarwal-Kairouz-Liu Thm. 3.5),
  written out here and converted with dp-accounting: a δ fixed in the conversion shows.
- Hypothesis: the decoder's signed representative at the wrap boundaries ±2^(b-1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import Decoder, DPConfig, Encoder, EncodingPlan, PrivacyAccountant
from dp.config import FINE_RDP_ORDERS, INTEGER_RDP_ORDERS
from dp.prng import SecureRng
from dp.rotation import rotation_signs, unrotate

SEED = b"public-round-seed-0123456789abcd"


def _round_trip(clip: float, update: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """Encode one update without noise at 40 bits and decode it: (decoded, clipped, norm)."""
    plan = EncodingPlan.create(
        DPConfig(mechanism="none", noise_multiplier=0.0, clip=clip, bits=40),
        update.size, 3, 3,
    )
    x, report = Encoder(plan, SEED).encode(update, SecureRng.for_simulation(0, "gaps"))
    total = Decoder(plan, SEED).decode(x.astype(np.uint64), 1).total
    return total, report.clipped, report.norm


def _with_norm(norm: float, dim: int = 64, seed: int = 3) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=dim)
    return u * (norm / np.linalg.norm(u))


@pytest.mark.parametrize(
    "clip,norm,clipped",
    [
        (0.5, 0.6, True),  # C < 1: norm^2 = 0.36 < C although norm > C
        (0.5, 0.45, False),
        (0.1, 0.2, True),
        (4.0, 3.0, False),  # C > 1: norm^2 = 9 > C although norm < C
        (4.0, 5.0, True),
    ],
)
def test_clipping_at_small_and_large_c(clip: float, norm: float, clipped: bool) -> None:
    u = _with_norm(norm)
    total, was_clipped, reported = _round_trip(clip, u)
    assert was_clipped is clipped
    assert reported == pytest.approx(norm, rel=1e-12)
    expected = u * (clip / norm) if clipped else u
    np.testing.assert_allclose(total, expected, atol=1e-6)
    assert np.linalg.norm(total) <= min(norm, clip) + 1e-6


@pytest.mark.parametrize("clip", [0.3, 1.0, 2.5])
def test_clipping_at_norms_close_to_c(clip: float) -> None:
    for factor, clipped in ((1 + 1e-9, True), (1 + 1e-6, True), (1 - 1e-9, False),
                            (1 - 1e-6, False)):
        u = _with_norm(clip * factor, seed=int(factor * 1e9) % 1000)
        total, was_clipped, _ = _round_trip(clip, u)
        assert was_clipped is clipped, (clip, factor)
        # clipped or not, the result has norm min(||u||, C), in direction u
        np.testing.assert_allclose(total, u * min(1.0, clip / np.linalg.norm(u)), atol=1e-6)


# ------------------------------------------------------------------ discrete ε at several δ


def reference_ddgauss_rdp(alpha: np.ndarray, d2: float, d1: float, s: float, n: int,
                          d: int) -> np.ndarray:
    """REFERENCES.md: distributed discrete Gaussian, Prop. 14 / Eq. 17."""
    tau = 10.0 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    sigma = math.sqrt(n) * s
    a, b = d2 / sigma, d1 / sigma
    return np.minimum.reduce([
        alpha / 2 * a**2 + tau * d,
        alpha / 2 * (a**2 + 2 * b * tau + tau**2 * d),
        alpha / 2 * (a + math.sqrt(d) * tau) ** 2,
    ])


def reference_skellam_rdp(alpha: np.ndarray, d2: float, d1: float, mu: float) -> np.ndarray:
    """REFERENCES.md: Skellam, with mu the summed variance."""
    return alpha * d2**2 / (2 * mu) + np.minimum(
        ((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu)
    )


DELTAS = [1e-3, 1e-5, 1e-7, 1e-10]


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_discrete_epsilon_at_several_deltas_matches_the_reference(mechanism: str) -> None:
    rounds, n, dim = 20, 10, 1000
    figures = []
    for delta in DELTAS:
        cfg = DPConfig(mechanism=mechanism, noise_multiplier=0.8, bits=20, delta=delta)
        plan = EncodingPlan.create(cfg, dim, n, 8)
        event = plan.privacy_event(9)  # one dropout: 9 honest shares
        assert event.n_shares == 9 and event.count_sensitivity == 0 == event.eval_sensitivity
        if mechanism == "ddgauss":
            orders = np.asarray(FINE_RDP_ORDERS, dtype=np.float64)
            rdp = reference_ddgauss_rdp(orders, event.l2_sensitivity, event.l1_sensitivity,
                                        event.local_stddev, 9, event.dim)
        else:
            orders = np.asarray(INTEGER_RDP_ORDERS, dtype=np.float64)
            rdp = reference_skellam_rdp(orders, event.l2_sensitivity, event.l1_sensitivity,
                                        9 * event.local_stddev**2)
        expected = compute_epsilon(orders.tolist(), (rounds * rdp).tolist(), delta)[0]
        acc = PrivacyAccountant(cfg, sample_rate=1.0)
        acc.compose(event, rounds)
        rep = acc.report()
        assert rep.delta == delta
        assert rep.epsilon == pytest.approx(expected, rel=1e-9), (mechanism, delta)
        assert rep.epsilon_amplified == rep.epsilon  # q = 1
        figures.append(rep.epsilon)
    # a smaller δ costs more ε: strictly, at these δ
    assert all(a < b for a, b in zip(figures, figures[1:], strict=False)), figures


def test_accountant_with_a_discrete_mechanism_is_sensitive_to_delta_in_its_report() -> None:
    """Same events, two δ: the reports differ (not one δ for every conversion)."""
    eps = []
    for delta in (1e-4, 1e-8):
        cfg = DPConfig(mechanism="skellam", noise_multiplier=1.0, bits=20, delta=delta)
        plan = EncodingPlan.create(cfg, 200, 5, 4)
        acc = PrivacyAccountant(cfg, sample_rate=1.0)
        acc.compose(plan.privacy_event(5), 3)
        eps.append(acc.report().epsilon)
    assert eps[0] < eps[1]


# ------------------------------------------------------------------ signed representative


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(16, 40), data=st.data())
def test_decoder_signed_representative_at_the_wrap(bits: int, data) -> None:
    """v in [0, 2^b) decodes as v for v < 2^(b-1) and v - 2^b from 2^(b-1) on, so
    2^(b-1) - 1 is the largest and -2^(b-1) the smallest value."""
    plan = EncodingPlan.create(
        DPConfig(mechanism="none", noise_multiplier=0.0, bits=bits), 8, 2, 2
    )
    mod, half = 1 << bits, 1 << (bits - 1)
    edge = st.sampled_from([0, 1, half - 2, half - 1, half, half + 1, mod - 1])
    v = np.array(data.draw(st.lists(edge, min_size=plan.encoded_dim,
                                    max_size=plan.encoded_dim)), dtype=np.uint64)
    signed = np.array([int(a) - mod if int(a) >= half else int(a) for a in v], dtype=np.float64)
    out = Decoder(plan, SEED).decode(v, 2)
    signs = rotation_signs(SEED, plan.padded_dim)
    expected = unrotate(signed[: plan.padded_dim] * plan.gamma, signs, plan.config.rotation,
                        plan.dim)
    np.testing.assert_allclose(out.total, expected, rtol=1e-12, atol=1e-12 * plan.gamma)
    with pytest.raises(ValueError, match="entries >= 2"):
        Decoder(plan, SEED).decode(np.full(plan.encoded_dim, mod, dtype=np.uint64), 2)


def test_secure_rng_says_what_it_is_and_refuses_copies() -> None:
    import copy

    rng = SecureRng(bytes(32))
    assert rng.simulation is False and repr(rng) == "SecureRng(AES-256-CTR, secret key)"
    sim = SecureRng.for_simulation(1, "x")
    assert sim.simulation is True and "SIMULATION ONLY" in repr(sim)
    msg = ("^a SecureRng cannot be copied or pickled: a copy replays the same keystream, "
           r"i\.e\. the same noise; create one generator per use$")
    for attempt in (copy.copy, copy.deepcopy, lambda r: r.__reduce__()):
        with pytest.raises(TypeError, match=msg):
            attempt(rng)
    u = rng.random(1000)
    assert u.dtype == np.float64 and 0.0 <= u.min() and u.max() < 1.0
