"""Private federated evaluation (issue 14, part 2): the evaluation block of the encoding.

Each device appends m * (one-hot accuracy bucket, accuracy, examples / N_cap, loss sum /
(N_cap L_max)) to its update, with its own noise; the server decodes the histogram of
device accuracy, the device-weighted accuracy, the examples and the loss. The block is
charged with the round: its RDP adds to the update's (the Gaussian: noise multipliers
combine as z_eff^-2 = z_update^-2 + z_eval^-2).
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import (
    Decoder,
    DPConfig,
    DPConfigError,
    Encoder,
    EncodingPlan,
    PrivacyAccountant,
    RoundPrivacy,
    epsilon_report,
)
from dp.encoding import eval_values
from dp.prng import SecureRng

DIM = 40


def _rng(*labels: int | str) -> SecureRng:
    return SecureRng.for_simulation(7, "fe-test", *labels)


def _round(plan: EncodingPlan, stats: np.ndarray, draw: int = 0) -> dict:
    """Encode every device's (zero update, stats), sum mod 2^b, decode the block;
    ``draw`` picks the devices' noise generators."""
    n = stats.shape[0]
    seed = bytes(32)
    enc = Encoder(plan, seed)
    rows, _ = enc.encode_batch(np.zeros((n, DIM)), [_rng(draw, i) for i in range(n)], stats)
    total = np.zeros(plan.encoded_dim, dtype=np.uint64)
    for row in rows:
        total = (total + row) & np.uint64(plan.modulus - 1)
    decoded = Decoder(plan, seed).decode(total, n)
    assert decoded.evaluation is not None
    return decoded.evaluation


def _stats(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)  # test data, not key material
    examples = g.integers(1, 17, size=n)
    correct = np.array([g.integers(0, k + 1) for k in examples])
    loss = g.uniform(0.0, 3.0, size=n) * examples
    return np.stack([correct / examples, examples, loss], axis=1).astype(np.float64)


def _true_histogram(stats: np.ndarray, buckets: int) -> np.ndarray:
    acc = stats[:, 0]
    idx = np.minimum(np.floor(acc * buckets), buckets - 1).astype(int)
    return np.bincount(idx, minlength=buckets).astype(float)


@pytest.mark.parametrize("mechanism,z", [("none", 0.0), ("ddgauss", 0.0), ("skellam", 0.0)])
def test_decoded_histogram_equals_the_true_one_with_the_noise_off(mechanism: str, z: float) -> None:
    n, buckets = 30, 10
    cfg = DPConfig(mechanism=mechanism, noise_multiplier=z, bits=20, eval_buckets=buckets)
    plan = EncodingPlan.create(cfg, DIM, n, n)
    assert plan.encoded_dim == plan.padded_dim + buckets + 3
    stats = _stats(n)
    out = _round(plan, stats)
    np.testing.assert_array_equal(out["histogram"], _true_histogram(stats, buckets))
    m = plan.eval_scale
    # the three other slots are randomly rounded to 1/m per device
    assert abs(out["accuracy"] - stats[:, 0].mean()) <= 1.0 / m
    assert abs(out["examples"] - stats[:, 1].sum()) <= n * cfg.eval_max_examples / m
    true_loss = stats[:, 2].sum() / stats[:, 1].sum()
    assert out["loss"] == pytest.approx(true_loss, rel=0.02)
    assert out["count_stddev"] == 0.0 and out["devices"] == n


def test_histogram_with_noise_is_unbiased_within_its_stated_std() -> None:
    """Over many rounds the noised counts centre on the truth, with the std the decoder
    reports (2 * ratio * z devices with t honest shares)."""
    n, buckets, z, ratio = 20, 5, 0.7, 2.0
    cfg = DPConfig(mechanism="ddgauss", noise_multiplier=z, bits=20, eval_buckets=buckets,
                   eval_noise_ratio=ratio)
    plan = EncodingPlan.create(cfg, DIM, n, n)
    assert plan.eval_stddev(n) == pytest.approx(2 * ratio * z, rel=0.05)
    stats = _stats(n, 3)
    truth = _true_histogram(stats, buckets)
    draws = np.array([_round(plan, stats, k)["histogram"] for k in range(60)])
    std = plan.eval_stddev(n)
    # mean of 60 draws: its std is std / sqrt(60); 4.5 of those is a loose, sound bound
    assert np.all(np.abs(draws.mean(axis=0) - truth) < 4.5 * std / math.sqrt(60))
    assert draws.std(axis=0).mean() == pytest.approx(std, rel=0.3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-100, 1000), st.floats(-50, 1e4)),
                min_size=1, max_size=8))
def test_block_norm_is_bounded_whatever_a_device_reports(
    rows: list[tuple[float, float, float]],
) -> None:
    """The sensitivity the accountant uses (L2 <= 2m) holds for any input: out-of-range
    stats are clamped before encoding."""
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=24, eval_buckets=10)
    plan = EncodingPlan.create(cfg, DIM, 8, 8)
    enc = Encoder(plan, bytes(32))
    values = eval_values(np.array(rows), cfg)
    for i, v in enumerate(values):
        block = enc._eval_block(v, _rng("norm", i))
        assert block.min() >= 0
        assert float(np.linalg.norm(block)) <= 2 * plan.eval_scale + 1e-9
        assert float(np.abs(block).sum()) <= 4 * plan.eval_scale


def test_encoder_requires_and_refuses_evaluation_rows_by_plan() -> None:
    on = EncodingPlan.create(DPConfig(mechanism="none", noise_multiplier=0.0,
                                      eval_buckets=4), DIM, 3, 3)
    off = EncodingPlan.create(DPConfig(mechanism="none", noise_multiplier=0.0), DIM, 3, 3)
    with pytest.raises(ValueError, match="federated evaluation is on"):
        Encoder(on, bytes(32)).encode(np.zeros(DIM), _rng("a"))
    with pytest.raises(ValueError, match="no evaluation block"):
        Encoder(off, bytes(32)).encode(np.zeros(DIM), _rng("b"), [0.5, 3, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        Encoder(on, bytes(32)).encode(np.zeros(DIM), _rng("c"), [math.nan, 3, 1.0])


@pytest.mark.parametrize("bad", [
    {"eval_buckets": 1}, {"eval_buckets": 101}, {"eval_buckets": True},
    {"eval_noise_ratio": 0.0}, {"eval_max_examples": 0}, {"eval_max_loss": -1.0},
])
def test_config_refuses_bad_evaluation_settings(bad: dict) -> None:
    with pytest.raises(DPConfigError):
        DPConfig(**bad)


def test_too_few_bits_for_the_block_is_a_clear_error() -> None:
    cfg = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=8, eval_buckets=10)
    with pytest.raises(DPConfigError, match="bits"):
        EncodingPlan.create(cfg, 4, 200, 200)


# --------------------------------------------------------------------------- accounting


def _eps_plain(mechanism: str, buckets: int, ratio: float = 2.0, rounds: int = 20) -> float:
    return epsilon_report(mechanism, 1.1, 1.0, rounds, 1e-5, clients_per_round=40, bits=20,
                          dim=1000, population=40, sampling="fixed", eval_buckets=buckets,
                          eval_noise_ratio=ratio).epsilon


def test_combined_gaussian_epsilon_is_the_composition_of_the_two_releases() -> None:
    """Unamplified, Gaussian: the round releases the update with noise multiplier z_u
    and the evaluation block with z_e = ratio * z (its count std 2 ratio z over an L2
    sensitivity of 2). Composing the two Gaussians in dp-accounting's own RDP accountant
    must give the figure the accountant charges."""
    z, ratio, rounds, n = 1.1, 2.0, 20, 40
    cfg = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=20, eval_buckets=10,
                   eval_noise_ratio=ratio)
    plan = EncodingPlan.create(cfg, 1000, n, n)
    event = plan.privacy_event(n)
    z_update = event.noise_stddev / event.l2_sensitivity
    z_eval = math.sqrt(event.n_shares) * event.eval_local_stddev / event.eval_sensitivity
    assert z_eval == pytest.approx(ratio * z, rel=1e-9)
    ref = dp_accounting.rdp.RdpAccountant()
    ref.compose(dp_accounting.GaussianDpEvent(z_update), rounds)
    ref.compose(dp_accounting.GaussianDpEvent(z_eval), rounds)
    acc = PrivacyAccountant(cfg, 1.0, "rdp", sampling="fixed", population=n)
    acc.compose(event, rounds)
    assert acc.report().epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-6)


def test_amplified_figure_charges_the_evaluation_block_too() -> None:
    """Amplified (Poisson, replace-one, WBK), Gaussian: a round with the block costs what
    a round without it costs at the combined noise multiplier z_eff."""
    n, population = 40, 400
    cfg = DPConfig(mechanism="gaussian", noise_multiplier=1.1, bits=20, eval_buckets=10)
    event = EncodingPlan.create(cfg, 1000, n, n).privacy_event(n)
    z_eff = event.gaussian_noise_multiplier
    assert z_eff < event.noise_stddev / event.l2_sensitivity
    # the same round without the block, its noise scaled down to give the same z_eff
    plain = RoundPrivacy(
        mechanism="gaussian", n_shares=event.n_shares,
        local_stddev=z_eff * event.l2_sensitivity / math.sqrt(event.n_shares),
        l2_sensitivity=event.l2_sensitivity, l1_sensitivity=event.l1_sensitivity,
        dim=event.dim, gamma=event.gamma, clip=event.clip,
    )
    assert plain.gaussian_noise_multiplier == pytest.approx(z_eff, rel=1e-12)
    reports = []
    for ev, dp_cfg in ((event, cfg), (plain, DPConfig(mechanism="gaussian", noise_multiplier=1.1))):
        acc = PrivacyAccountant(dp_cfg, n / population, "rdp", sampling="poisson",
                                population=population)
        acc.compose(ev, 10, cohort=n)
        reports.append(acc.report())
    assert reports[0].epsilon_amplified == pytest.approx(reports[1].epsilon_amplified, rel=1e-9)


@pytest.mark.parametrize("mechanism", ["gaussian", "ddgauss", "skellam"])
def test_evaluation_costs_privacy_and_less_with_more_noise(mechanism: str) -> None:
    off = _eps_plain(mechanism, 0)
    on = _eps_plain(mechanism, 10, ratio=2.0)
    quiet = _eps_plain(mechanism, 10, ratio=20.0)
    assert on > quiet > off
    assert quiet == pytest.approx(off, rel=0.01)


def test_stored_round_privacy_without_evaluation_fields_still_loads() -> None:
    """Charges written before the block existed replay unchanged (no eval fields)."""
    event = EncodingPlan.create(DPConfig(), 100, 10, 10).privacy_event(10)
    d = event.to_dict()
    for key in ("eval_sensitivity", "eval_local_stddev", "eval_dim"):
        d.pop(key)
    assert RoundPrivacy.from_dict(d) == event
