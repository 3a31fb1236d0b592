"""dp.encoding against reference implementations written from the formulas (issue 16).

Each test pins a whole result computed independently here:
- the plan (gamma, local scales, Delta2 / Delta1, the count slot and the evaluation
  block) from Kairouz, Liu, Steinke (ICML 2021, Sec. 4.1) and the rules in the
  docstrings of `EncodingPlan.create`, `_count_slot` and `_eval_slots`;
- the encoded vectors bit for bit, from a reference pipeline (clip, dense rotation matrix,
  scaling, conditional randomized rounding, the noise share, mod 2^b) that draws the same
  uniforms from a `SecureRng` with the same key;
- the decoded sum (dense inverse rotation, signed representative), the clipped count,
  the evaluation block and the wrap statistics (`DecodedSum` docstring);
- the validation of the plan and of the stored privacy records, with the bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable

import numpy as np
import pytest
from scipy.linalg import hadamard

from dp import Decoder, DPConfig, DPConfigError, Encoder, EncodingPlan, RoundPrivacy
from dp import noise as dpnoise
from dp.encoding import (
    decode_evaluation,
    eval_values,
    rounding_bias_bound,
    rounding_l2_bound,
    update_clip,
)
from dp.mechanisms import (
    MECHANISM_REGISTRY,
    NoiseMechanism,
    ddgauss_rdp,
    get_mechanism,
    register_mechanism,
    skellam_rdp,
)
from dp.prng import SecureRng
from dp.rotation import padded_dim, rotate, rotation_signs, unrotate

SEED = b"mutation-encoding-round-seed-001"


def _rng(*labels: int | str) -> SecureRng:
    return SecureRng.for_simulation(16, "tests/dp/test_mutation_encoding", *labels)


# ------------------------------------------------------------------ reference formulas


def ref_padded(dim: int, rotation: str) -> int:
    if rotation == "hadamard":
        d = 1
        while d < dim:
            d *= 2
        return d
    return max(2, dim + dim % 2)


def ref_l2(scaled_clip: float, d: int, beta: float) -> float:
    """Delta2 of REFERENCES.md (second term only for beta > 0)."""
    plain = scaled_clip + math.sqrt(d)
    if beta == 0:
        return plain
    s = math.sqrt(2 * math.log(1 / beta))
    return min(plain, math.sqrt(scaled_clip**2 + d / 4 + s * (scaled_clip + math.sqrt(d) / 2)))


def ref_plan(cfg: DPConfig, dim: int, n: int, t: int, c: int = 0) -> dict:
    """The plan's derived values from the published rules."""
    mech = get_mechanism(cfg.mechanism)
    d = ref_padded(dim, cfg.rotation)
    k = math.sqrt(2 * math.log(2 / cfg.modclip_prob))
    half = 2.0 ** (cfg.bits - 1)
    sig_u = cfg.noise_multiplier * cfg.clip / math.sqrt(t - c) if cfg.mechanism != "none" else 0
    data_var = (cfg.clip * n) ** 2 / d
    g = math.sqrt((data_var + n * sig_u**2) / ((half / k) ** 2 - n / 4))
    if sig_u > 0 and sig_u / g > mech.max_local_scale:
        g = sig_u / mech.max_local_scale

    def local(g: float) -> float:
        return mech.local_scale(sig_u / g) if sig_u > 0 else 0.0

    # the discrete scale is rounded up: gamma grows by 1 % until k std fit in 2^(b-1)
    while k * math.sqrt(data_var / g**2 + n / 4 + n * local(g) ** 2) > half:
        g *= 1.01
    l2 = ref_l2(cfg.clip / g, d, cfg.beta)
    out = {
        "dim": dim, "n_clients": n, "min_contributors": t, "padded_dim": d,
        "encoded_dim": d + int(cfg.adaptive_clip) + (cfg.eval_buckets + 3 if cfg.eval_buckets
                                                      else 0),
        "gamma": g, "local_stddev": local(g), "k_stddevs": k, "l2_sensitivity": l2,
        "l1_sensitivity": l2 * min(math.sqrt(d), l2), "count_scale": 0,
        "count_local_stddev": 0.0, "corrupt": c, "eval_scale": 0, "eval_local_stddev": 0.0,
    }
    if cfg.adaptive_clip:
        # centred count: m * (+-1); the sum of t - c shares has std 2 m sigma_b
        sb = cfg.clipped_count_stddev if cfg.clipped_count_stddev is not None else n / 20
        if cfg.mechanism == "none" or sb == 0:
            m, loc = 1, 0.0
        else:
            m = max(1, math.ceil(20 * math.sqrt(t - c) / (2 * sb)))
            while True:
                loc = mech.local_scale(2 * sb * m / math.sqrt(t - c))
                if n * m + k * math.sqrt(n) * loc < half:
                    break
                m //= 2
        out["count_scale"], out["count_local_stddev"] = m, loc
    if cfg.eval_buckets:
        sigma = 2 * cfg.eval_noise_ratio * cfg.noise_multiplier
        noisy = cfg.mechanism != "none" and sigma > 0
        m = 4096
        while True:
            loc = mech.local_scale(sigma * m / math.sqrt(t - c)) if noisy else 0.0
            if n * m + k * math.sqrt(n) * loc < half and (not noisy or loc >= mech.min_local_scale):
                break
            m //= 2
        out["eval_scale"], out["eval_local_stddev"] = m, loc
    return out


def assert_plan_matches(plan: EncodingPlan, expected: dict) -> None:
    got = plan.to_dict()
    got.pop("config")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert type(got[key]) is type(value) or isinstance(value, float), key
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=0), key
        else:
            assert got[key] == value, key
    # JSON as a device receives it: integers stay integers
    assert json.loads(json.dumps(plan.to_dict())) == plan.to_dict()
    for key in ("count_scale", "eval_scale", "padded_dim", "encoded_dim"):
        assert type(getattr(plan, key)) is int, key


PLANS = [
    # ddgauss with collusion, the count slot and the evaluation block
    (DPConfig(mechanism="ddgauss", bits=16, adaptive_clip=True, eval_buckets=4), 40, 10, 8, 2),
    # skellam, DFT, odd dim, C != 1
    (DPConfig(mechanism="skellam", bits=18, clip=0.7, noise_multiplier=0.8, rotation="dft"),
     13, 7, 5, 0),
    # rounded Gaussian without conditional rounding (Delta2 = c~ + sqrt(d))
    (DPConfig(mechanism="gaussian", bits=20, beta=0.0), 20, 5, 5, 1),
    # a configured clipped-count std far from n / 20: large count scale
    (DPConfig(mechanism="ddgauss", bits=16, adaptive_clip=True, clipped_count_stddev=0.05),
     40, 10, 8, 0),
    # a large count std: m = max(1, ceil(.)) = 1
    (DPConfig(mechanism="skellam", bits=20, adaptive_clip=True, clipped_count_stddev=500.0),
     16, 10, 9, 0),
    # the count slot halves m until n m + k sqrt(n) local fits (12 bits)
    (DPConfig(mechanism="ddgauss", bits=12, noise_multiplier=0.3, adaptive_clip=True,
              clipped_count_stddev=0.2, modclip_prob=0.1), 8, 30, 30, 0),
    # no noise: count slot m = 1 without noise
    (DPConfig(mechanism="none", noise_multiplier=0.0, bits=8, adaptive_clip=True), 8, 127, 100, 0),
    # the rounded Gaussian with z = 0 and an evaluation block: no noise anywhere
    (DPConfig(mechanism="gaussian", bits=20, eval_buckets=3, noise_multiplier=0.0), 8, 5, 5, 0),
    # n m = 2^(b-1) exactly at m = 2048: the block takes m = 1024
    (DPConfig(mechanism="none", bits=20, noise_multiplier=0.0, eval_buckets=3), 8, 256, 5, 0),
    # eval noise std 2 * 0.25 * 1 = 0.5 devices (< 1): still noised
    (DPConfig(mechanism="ddgauss", bits=24, noise_multiplier=1.0, eval_buckets=2,
              eval_noise_ratio=0.25), 8, 4, 4, 0),
    # an evaluation block whose only fitting scale is m = 1
    (DPConfig(mechanism="none", bits=12, noise_multiplier=0.0, eval_buckets=2), 8, 1500, 5, 0),
    # the evaluation block's scale is halved by the noise term (n m alone fits at 4096)
    (DPConfig(mechanism="skellam", bits=20, noise_multiplier=1.0, eval_buckets=5), 64, 100, 5, 0),
    # more bits than the sampler can use: gamma = sigma_u / max_local_scale
    (DPConfig(mechanism="ddgauss", bits=40), 16, 4, 4, 0),
    # no noise: the count slot is m = 1 even where bits would hold a larger m
    (DPConfig(mechanism="none", noise_multiplier=0.0, bits=20, adaptive_clip=True), 8, 10, 10, 0),
    # the count slot halves 32 -> 16 -> 8 -> 4 -> 2 -> 1 and takes m = 1
    (DPConfig(mechanism="skellam", bits=8, noise_multiplier=0.5, adaptive_clip=True,
              clipped_count_stddev=2.5), 8, 64, 64, 0),
    # the rounded Gaussian's evaluation share at exactly its minimum local std (1.0)
    (DPConfig(mechanism="gaussian", bits=20, eval_buckets=2, eval_noise_ratio=2.0**-13),
     8, 1, 1, 0),
]


@pytest.mark.parametrize("cfg,dim,n,t,c", PLANS)
def test_plan_matches_the_reference_formulas(cfg: DPConfig, dim: int, n: int, t: int,
                                             c: int) -> None:
    plan = EncodingPlan.create(cfg, dim, n, t, c)
    assert_plan_matches(plan, ref_plan(cfg, dim, n, t, c))
    assert EncodingPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_plan_cases_reach_the_branches_they_name() -> None:
    """The PLANS above really exercise what their comments say."""
    by = [EncodingPlan.create(cfg, dim, n, t, c) for cfg, dim, n, t, c in PLANS]
    assert by[0].corrupt == 2 and by[0].eval_scale < 4096
    assert by[2].l2_sensitivity == pytest.approx(by[2].config.clip / by[2].gamma + math.sqrt(32))
    assert by[3].count_scale > 1 and by[4].count_scale == 1
    assert by[5].count_scale < math.ceil(20 * math.sqrt(30) / 0.4)  # halved
    assert (by[6].count_scale, by[6].count_local_stddev) == (1, 0.0)
    assert (by[7].eval_scale, by[7].eval_local_stddev) == (4096, 0.0)
    assert by[8].eval_scale == 1024
    assert by[9].eval_local_stddev > 0
    assert by[10].eval_scale == 1
    assert by[11].eval_scale == 2048 and 100 * 4096 < 2**19
    assert by[12].local_stddev == get_mechanism("ddgauss").max_local_scale
    assert (by[13].count_scale, by[13].count_local_stddev) == (1, 0.0)
    assert by[14].count_scale == 1 and math.ceil(20 * 8 / 5.0) == 32
    assert (by[15].eval_scale, by[15].eval_local_stddev) == (4096, 1.0)


def test_count_slot_without_noise_needs_n_below_half() -> None:
    """Without noise the count is n in the worst case: n = 2^(b-1) does not fit."""
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=8, adaptive_clip=True)
    with pytest.raises(DPConfigError, match="bits=8 too small for a count of 128 clients"):
        EncodingPlan.create(cfg, 8, 128, 100)


def _in_time(
    fn: Callable[[], object], seconds: float = 10.0
) -> tuple[object, BaseException | None]:
    """Run fn in a daemon thread: (its result, the exception it raised), or a test failure
    if it neither returned nor raised in time (a loop that never ends)."""
    box: list = [None, None]

    def run() -> None:
        try:
            box[0] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box[1] = err

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        pytest.fail(f"no answer in {seconds} s: the loop does not terminate")
    return box[0], box[1]


def _refusal(fn: Callable[[], object]) -> BaseException | None:
    return _in_time(fn)[1]


def test_count_slot_that_cannot_fit_names_its_noise() -> None:
    cfg = DPConfig(mechanism="ddgauss", bits=8, noise_multiplier=0.1, adaptive_clip=True,
                   clipped_count_stddev=200.0, modclip_prob=0.4)
    err = _refusal(lambda: EncodingPlan.create(cfg, 8, 10, 10))
    assert isinstance(err, DPConfigError)
    assert "clipped count of 10 clients (count noise std 200" in str(err)


def test_eval_block_refuses_a_gaussian_share_it_cannot_account_for() -> None:
    """The rounded Gaussian's accounting needs a local std >= 1: an evaluation block whose
    only fitting scales give less is refused (not planned with an unaccounted share)."""
    cfg = DPConfig(mechanism="gaussian", bits=24, noise_multiplier=1.0, eval_buckets=2,
                   eval_noise_ratio=0.001)
    err = _refusal(lambda: EncodingPlan.create(cfg, 1024, 1000, 1000))
    assert isinstance(err, DPConfigError)
    assert "federated-evaluation block of 1000 clients" in str(err)


def test_rounding_l2_bound_both_regimes() -> None:
    # conditional bound binding
    assert rounding_l2_bound(10.0, 64, math.exp(-0.5)) == pytest.approx(
        math.sqrt(100 + 16 + 1.0 * (10 + 4)), rel=1e-14)
    # beta = 0: deterministic bound
    assert rounding_l2_bound(10.0, 64, 0.0) == 18.0
    # tiny beta, small d: the deterministic bound is the smaller one
    assert rounding_l2_bound(1000.0, 4, 1e-12) == 1002.0


def test_rounding_bias_bound_of_a_plan() -> None:
    """n gamma sqrt(p) / (2 (1 - p)), p = beta only when the conditional bound is in force."""
    cfg = DPConfig(mechanism="ddgauss", bits=16)
    plan = EncodingPlan.create(cfg, 40, 10, 8)
    b = math.exp(-0.5)
    per = math.sqrt(b) / (2 * (1 - b))
    assert plan.rounding_bias_bound() == pytest.approx(10 * plan.gamma * per, rel=1e-14)
    assert plan.rounding_bias_bound(3) == pytest.approx(3 * plan.gamma * per, rel=1e-14)
    # tiny beta, d = 4: Delta2 = c~ + sqrt(d), no draw is ever rejected, no bias
    det = EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=16, beta=1e-12), 4, 10, 8)
    assert det.l2_sensitivity == pytest.approx(det.config.clip / det.gamma + 2.0, rel=1e-14)
    assert det.rounding_bias_bound(5) == 0.0
    for bad in (0, 2.5, True, -1):
        with pytest.raises(DPConfigError, match=f"got {bad!r}"):
            plan.rounding_bias_bound(bad)
    assert rounding_bias_bound(0.25) == pytest.approx(0.5 / 1.5)
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            rounding_bias_bound(bad)


def test_eval_stddev_and_privacy_event_without_the_block() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=16), 40, 10, 8)
    assert plan.eval_stddev(7) == 0.0
    ev = EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=16, eval_buckets=4), 40, 10, 8)
    assert ev.eval_stddev(7) == pytest.approx(math.sqrt(7) * ev.eval_local_stddev
                                              / ev.eval_scale)


# -------------------------------------------------------------- plan dict validation


def test_plan_from_dict_checks_every_derived_value() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="skellam", bits=18), 40, 10, 8, 1)
    d = plan.to_dict()
    # within the 1e-9 relative tolerance of a float that travelled through JSON
    ok = dict(d, gamma=d["gamma"] * (1 + 1e-12))
    assert EncodingPlan.from_dict(ok) == plan
    with pytest.raises(DPConfigError, match="EncodingPlan gamma="):
        EncodingPlan.from_dict(dict(d, gamma=d["gamma"] * (1 + 1e-6)))
    # integer fields compare exactly and by type of value, not as floats
    with pytest.raises(DPConfigError, match="EncodingPlan padded_dim='64' disagrees with 64"):
        EncodingPlan.from_dict(dict(d, padded_dim="64"))
    with pytest.raises(DPConfigError, match="unknown EncodingPlan key 'extra'"):
        EncodingPlan.from_dict(dict(d, extra=1))
    lacking = dict(d)
    del lacking["n_clients"]
    with pytest.raises(DPConfigError, match="EncodingPlan dict lacks 'n_clients'"):
        EncodingPlan.from_dict(lacking)
    with pytest.raises(DPConfigError, match="needs a dict, got list"):
        EncodingPlan.from_dict([d])
    # a config written by an older version, without the keys that have defaults since
    short = dict(d, config={k: v for k, v in d["config"].items()
                            if k not in ("eval_buckets", "eval_noise_ratio", "eval_max_examples",
                                         "eval_max_loss", "clipped_count_stddev")})
    assert EncodingPlan.from_dict(short) == plan
    # a dict from before the corrupt bound existed: c = 0
    plain = EncodingPlan.create(plan.config, 40, 10, 8)
    old = plain.to_dict()
    del old["corrupt"]
    assert EncodingPlan.from_dict(old) == plain


# ----------------------------------------------------------- RoundPrivacy from_dict


def _event() -> RoundPrivacy:
    cfg = DPConfig(mechanism="ddgauss", bits=16, adaptive_clip=True, eval_buckets=4)
    return EncodingPlan.create(cfg, 40, 10, 8, 2).privacy_event(9)


def test_round_privacy_round_trip_keeps_types() -> None:
    ev = _event()
    back = RoundPrivacy.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert back == ev
    assert json.dumps(back.to_dict()) == json.dumps(ev.to_dict())
    # integers given for float fields come back as floats, integer fields stay integers
    d = dict(ev.to_dict(), local_stddev=3, clip=1, n_shares=4, dim=64, corrupt=1, eval_dim=7)
    r = RoundPrivacy.from_dict(d)
    assert [type(getattr(r, k)) for k in ("local_stddev", "clip", "n_shares", "dim", "corrupt",
                                          "eval_dim", "mechanism")] == [
        float, float, int, int, int, int, str]


def test_round_privacy_from_an_older_store_takes_the_defaults() -> None:
    """Records written before collusion, the count slot or the evaluation block existed."""
    ev = _event().to_dict()
    old = {k: ev[k] for k in ("mechanism", "n_shares", "local_stddev", "l2_sensitivity",
                              "l1_sensitivity", "dim", "gamma", "clip")}
    r = RoundPrivacy.from_dict(old)
    assert (r.corrupt, r.eval_dim, r.count_sensitivity, r.count_local_stddev,
            r.eval_sensitivity, r.eval_local_stddev) == (0, 0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "key,bad",
    [("n_shares", 2.5), ("n_shares", "3"), ("n_shares", True), ("n_shares", -1),
     ("dim", 0), ("corrupt", -1), ("eval_dim", 1.0),
     ("local_stddev", "1.0"), ("local_stddev", True), ("local_stddev", -0.5),
     ("gamma", math.inf), ("clip", math.nan), ("count_sensitivity", -1.0),
     ("eval_local_stddev", "x")],
)
def test_round_privacy_refuses_bad_values(key: str, bad: object) -> None:
    with pytest.raises(DPConfigError, match=f"RoundPrivacy {key} must be .*got {bad!r}"):
        RoundPrivacy.from_dict(dict(_event().to_dict(), **{key: bad}))


def test_round_privacy_dim_one_and_zero_shares_are_valid() -> None:
    r = RoundPrivacy.from_dict(dict(_event().to_dict(), dim=1, n_shares=0, corrupt=0))
    assert (r.dim, r.n_shares) == (1, 0)


@pytest.mark.parametrize("key", ["n_shares", "dim", "local_stddev", "gamma", "mechanism"])
def test_round_privacy_refuses_a_missing_key(key: str) -> None:
    d = _event().to_dict()
    del d[key]
    with pytest.raises(DPConfigError, match=key):
        RoundPrivacy.from_dict(d)


def test_round_privacy_refuses_what_is_not_a_record() -> None:
    with pytest.raises(DPConfigError, match="needs a dict, got list"):
        RoundPrivacy.from_dict([1])
    with pytest.raises(DPConfigError, match="unknown RoundPrivacy keys: \\['zz'\\]"):
        RoundPrivacy.from_dict(dict(_event().to_dict(), zz=1))
    with pytest.raises(DPConfigError, match="no-such-mech"):
        RoundPrivacy.from_dict(dict(_event().to_dict(), mechanism="no-such-mech"))


# ------------------------------------------------------------------ update_clip


def test_update_clip_defaults_are_the_papers() -> None:
    """Andrew et al.: target quantile 0.5, learning rate 0.2 by default."""
    for count, n in ((3.0, 10), (9.5, 10), (-2.0, 10), (14.0, 10), (0.0, 1)):
        b = min(1.0, max(0.0, 1 - count / n))
        assert update_clip(2.0, count, n) == pytest.approx(2.0 * math.exp(-0.2 * (b - 0.5)),
                                                          rel=1e-15)


@pytest.mark.parametrize(
    "args,match",
    [((0.0, 1.0, 5), "clip must be > 0, got 0.0"),
     ((math.inf, 1.0, 5), "clip must be > 0, got inf"),
     ((1.0, 1.0, 0), "n_contributors must be an integer >= 1, got 0"),
     ((1.0, 1.0, 2.5), "n_contributors must be an integer >= 1, got 2.5"),
     ((1.0, 1.0, True), "n_contributors must be an integer >= 1, got True"),
     ((1.0, math.nan, 5), "clipped_count must be finite, got nan")],
)
def test_update_clip_refuses_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        update_clip(*args)


# ---------------------------------------------------------------- eval_values


def test_eval_values_clamp_every_field() -> None:
    cfg = DPConfig(mechanism="ddgauss", eval_buckets=4, eval_max_examples=16, eval_max_loss=5.0)
    rows = np.array([
        [0.3, 8.0, 12.0],      # plain
        [1.5, 40.0, 1000.0],   # accuracy > 1, examples and loss above their caps
        [1.7, 0.5, 0.4],       # accuracy in (1, 2); fractional examples and loss
        [-0.2, 0.0, 3.0],      # no example: an all-zero block
        [1.0, 16.0, -4.0],     # accuracy exactly 1 -> last bucket; negative loss
        [0.9, -3.0, 2.0],      # negative examples count as none
    ])
    expected = np.array([
        [1, 0.3, 0.5, 12.0 / 80],
        [3, 1.0, 1.0, 1.0],
        [3, 1.0, 0.5 / 16, 0.4 / 80],
        [-1, 0.0, 0.0, 0.0],
        [3, 1.0, 1.0, 0.0],
        [-1, 0.0, 0.0, 0.0],
    ])
    np.testing.assert_array_equal(eval_values(rows, cfg), expected)
    with pytest.raises(ValueError, match=r"shape \(m, 3\), got \(2, 4\)"):
        eval_values(np.zeros((2, 4)), cfg)
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        eval_values(np.zeros(3), cfg)
    with pytest.raises(ValueError, match="NaN or infinite"):
        eval_values(np.array([[0.5, np.inf, 1.0]]), cfg)


# -------------------------------------------------- the encoder against a reference


def dense_rotation(signs: np.ndarray, rotation: str) -> np.ndarray:
    """The rotation as a d x d real matrix R (y = R x_padded), built from its definition:
    H D / sqrt(d) (Walsh-Hadamard), or F D with the real vector read as complex (DFT)."""
    d = signs.shape[0]
    if rotation == "hadamard":
        return hadamard(d).astype(np.float64) / math.sqrt(d) * signs[np.newaxis, :]
    h = d // 2
    j = np.arange(h)
    f = np.exp(-2j * math.pi * np.outer(j, j) / h) / math.sqrt(h)
    # complex z = v[:h] + i v[h:] -> (Re F z, Im F z)
    real = np.block([[f.real, -f.imag], [f.imag, f.real]])
    return real * signs[np.newaxis, :]


def ref_noise(mech: str, rng: SecureRng, scale: float, n: int) -> np.ndarray:
    if scale == 0 or mech == "none":
        return np.zeros(n, dtype=np.int64)
    if mech == "ddgauss":
        return dpnoise.discrete_gaussian(rng, scale, n)
    if mech == "skellam":
        return dpnoise.skellam(rng, scale**2, n)
    return np.rint(dpnoise.gaussian(rng, scale, n)).astype(np.int64)


def ref_encode(plan: EncodingPlan, x: np.ndarray, rng: SecureRng,
               evaluation: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(encoded vector, rounding tries) of one device, from the published pipeline."""
    cfg = plan.config
    norm = math.sqrt(float(np.sum(x * x)))
    if norm > cfg.clip:
        x = x * (cfg.clip / norm)
    xp = np.zeros(plan.padded_dim)
    xp[: plan.dim] = x
    y = dense_rotation(rotation_signs(SEED, plan.padded_dim), cfg.rotation) @ xp / plan.gamma
    low = np.floor(y)
    tries = 0
    while True:
        tries += 1
        r = low + (rng.random(plan.padded_dim) < (y - low))
        if float(r @ r) <= plan.l2_sensitivity**2:
            break
    vec = r.astype(np.int64) + ref_noise(cfg.mechanism, rng, plan.local_stddev, plan.padded_dim)
    parts = [vec]
    if cfg.adaptive_clip:
        bit = plan.count_scale * (1 if norm > cfg.clip else -1)
        parts.append(bit + ref_noise(cfg.mechanism, rng, plan.count_local_stddev, 1))
    if cfg.eval_buckets:
        m = plan.eval_scale
        vals = eval_values(evaluation[np.newaxis, :], cfg)[0]
        block = np.zeros(cfg.eval_buckets + 3, dtype=np.int64)
        if vals[0] >= 0:
            block[int(vals[0])] = m
        s = vals[1:] * m
        lo = np.floor(s)
        block[cfg.eval_buckets:] = np.minimum(lo + (rng.random(3) < s - lo), m)
        parts.append(block + ref_noise(cfg.mechanism, rng, plan.eval_local_stddev, block.size))
    full = np.concatenate(parts)
    return np.array([int(v) % plan.modulus for v in full], dtype=np.uint64), tries


ENCODE_CASES = [
    (DPConfig(mechanism="ddgauss", bits=16, adaptive_clip=True, eval_buckets=4), 40, 12, 8, 2),
    (DPConfig(mechanism="skellam", bits=18, clip=0.7, noise_multiplier=0.8, rotation="dft",
              adaptive_clip=True), 13, 10, 5, 0),
    (DPConfig(mechanism="gaussian", bits=20, beta=0.0, eval_buckets=2), 20, 9, 9, 1),
    # barely-slack conditional rounding: many draws are rejected
    (DPConfig(mechanism="none", noise_multiplier=0.0, bits=12, beta=0.999, clip=3.0), 64, 9, 9, 0),
    # local stds below 1 (update 0.079, count slot 0.625) and more rows (64) than entries (8)
    (DPConfig(mechanism="skellam", bits=8, noise_multiplier=0.5, adaptive_clip=True,
              clipped_count_stddev=2.5), 8, 64, 64, 0),
    # an evaluation share of std exactly 1.0
    (DPConfig(mechanism="gaussian", bits=20, eval_buckets=2, eval_noise_ratio=2.0**-13),
     8, 1, 1, 0),
    # a count slot without noise
    (DPConfig(mechanism="none", noise_multiplier=0.0, bits=20, adaptive_clip=True), 8, 10, 10, 0),
]


def _updates(m: int, dim: int, clip: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    u = g.normal(size=(m, dim))
    u *= (clip * g.uniform(0.2, 2.5, size=m) / np.linalg.norm(u, axis=1))[:, np.newaxis]
    u[0] *= 4.0 * clip / np.linalg.norm(u[0])  # clipped
    if m > 1:
        u[1] *= 0.5 * clip / np.linalg.norm(u[1])  # kept
    if m > 2:
        u[2] = 0.0
        u[2, 0] = clip  # norm exactly C: kept as is, counted as not clipped
    return u


def _evals(m: int) -> np.ndarray:
    g = np.random.default_rng(5)
    ev = np.stack([g.uniform(-0.1, 1.1, m), g.uniform(0, 20, m), g.uniform(0, 90, m)], axis=1)
    if m > 2:
        ev[2, 1] = 0.0  # a device without held-out examples
    return ev


@pytest.mark.parametrize("case", range(len(ENCODE_CASES)))
def test_encode_batch_equals_the_reference_pipeline(case: int) -> None:
    cfg, dim, n, t, c = ENCODE_CASES[case]
    plan = EncodingPlan.create(cfg, dim, n, t, c)
    u = _updates(n, dim, cfg.clip, case)
    evs = _evals(n) if cfg.eval_buckets else None
    out, reports = Encoder(plan, SEED).encode_batch(u, [_rng(case, i) for i in range(n)], evs)
    assert out.dtype == np.uint64 and out.shape == (n, plan.encoded_dim)
    tries = []
    for i in range(n):
        ref, k = ref_encode(plan, u[i], _rng(case, i), None if evs is None else evs[i])
        tries.append(k)
        np.testing.assert_array_equal(out[i], ref, err_msg=f"row {i}")
        norm = float(np.linalg.norm(u[i]))
        assert reports[i].to_dict() == pytest.approx({
            "norm": norm, "clipped": norm > cfg.clip, "clip": cfg.clip, "gamma": plan.gamma,
            "local_stddev": plan.local_stddev, "mechanism": cfg.mechanism}, rel=1e-14)
    if cfg.beta == 0.999:
        assert max(tries) > 1  # the redraw path was taken
    # one device alone, and a float32 update, give the same bits as its row of the batch
    one, rep = Encoder(plan, SEED).encode(u[0], _rng(case, 0),
                                          None if evs is None else list(evs[0]))
    np.testing.assert_array_equal(one, out[0])
    assert rep.clipped


def test_float32_updates_are_encoded_in_float64() -> None:
    """The norm, clip and rotation are computed in float64 whatever the input dtype."""
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=40)
    plan = EncodingPlan.create(cfg, 64, 3, 3)
    u = (np.random.default_rng(2).normal(size=(3, 64)) * 0.9).astype(np.float32)
    enc = Encoder(plan, SEED)
    a, _ = enc.encode_batch(u, [_rng("f32", i) for i in range(3)])
    b, _ = enc.encode_batch(u.astype(np.float64), [_rng("f32", i) for i in range(3)])
    np.testing.assert_array_equal(a, b)
    one, _ = enc.encode(u[0], _rng("f32", 0))
    np.testing.assert_array_equal(one, b[0])


# --------------------------------------------------------- the decoder against a reference


def _plan_with_all() -> EncodingPlan:
    cfg = DPConfig(mechanism="ddgauss", bits=16, adaptive_clip=True, eval_buckets=4)
    return EncodingPlan.create(cfg, 40, 12, 8, 2)


def test_decode_equals_the_reference() -> None:
    plan = _plan_with_all()
    mod, half = plan.modulus, plan.modulus // 2
    g = np.random.default_rng(11)
    v = g.integers(0, mod, size=plan.encoded_dim).astype(np.uint64)
    v[:4] = [half - 1, half, half + 1, mod - 1]
    v[plan.padded_dim] = mod - 3 * plan.count_scale  # count slot: -3 m
    signed = np.array([int(a) - mod if int(a) >= half else int(a) for a in v], dtype=np.float64)
    rot = dense_rotation(rotation_signs(SEED, plan.padded_dim), "hadamard")
    expected = (rot.T @ (signed[: plan.padded_dim] * plan.gamma))[: plan.dim]
    out, err = _in_time(lambda: Decoder(plan, SEED).decode(v, 9))
    assert err is None
    np.testing.assert_allclose(out.total, expected, rtol=1e-10, atol=1e-12)
    assert out.clipped_count == pytest.approx((-3 + 9) / 2)
    assert out.evaluation == decode_evaluation(signed[plan.eval_offset:], plan, 9)
    assert plan.eval_offset == plan.padded_dim + 1


def _ref_evaluation(slots: np.ndarray, plan: EncodingPlan, n: int) -> dict:
    cfg = plan.config
    b, m, cap, lmax = cfg.eval_buckets, plan.eval_scale, cfg.eval_max_examples, cfg.eval_max_loss
    std = math.sqrt(n) * plan.eval_local_stddev / m
    examples = slots[b + 1] / m * cap
    ok = examples >= max(1.0, 3 * std * cap)
    return {
        "buckets": b, "histogram": [h / m for h in slots[:b]], "devices": n,
        "accuracy": slots[b] / m / n, "examples": examples,
        "loss": (slots[b + 2] / m * cap * lmax) / examples if ok else None,
        "loss_stddev": std * cap * lmax / examples if ok else None,
        "count_stddev": std, "accuracy_stddev": std / n, "examples_stddev": std * cap,
    }


def test_decode_evaluation_equals_the_reference() -> None:
    noisy = _plan_with_all()
    m, cap = noisy.eval_scale, noisy.config.eval_max_examples
    std = noisy.eval_stddev(9)
    three = 3 * std * cap  # the loss is given from 3 std of the example count on
    cases = []
    for examples in (three * 1.2, three * 3.5, three * 0.8, three / cap * 2):
        cases.append((noisy, [3 * m, -m, 2 * m, 4 * m, 5 * m, round(examples * m / cap), 7 * m],
                      9))
    quiet = EncodingPlan.create(
        DPConfig(mechanism="none", noise_multiplier=0.0, bits=24, eval_buckets=2), 8, 5, 5)
    mq, cq = quiet.eval_scale, quiet.config.eval_max_examples
    # without noise the threshold is one example: exactly 1 gets a loss, 0.5 does not
    cases += [(quiet, [mq, 2 * mq, mq, mq // cq, 3 * mq], 5),
              (quiet, [mq, 2 * mq, mq, mq // (2 * cq), 3 * mq], 5)]
    seen = set()
    for plan, slots, n in cases:
        got = decode_evaluation(np.array(slots, dtype=np.int64), plan, n)
        want = _ref_evaluation(np.array(slots, dtype=np.float64), plan, n)
        assert list(got) == list(want)
        assert got == pytest.approx(want, rel=1e-14)
        seen.add(got["loss"] is None)
    assert seen == {True, False}
    assert decode_evaluation(np.array(cases[-2][1]), quiet, 5)["examples"] == 1.0


def _ref_binomial_upper(d: int, p: float, alpha: float) -> int:
    for a in range(max(1, math.ceil(d * p)), d + 1):
        x = a / d
        kl = x * math.log(x / p) + (0 if x == 1 else (1 - x) * math.log((1 - x) / (1 - p)))
        if x > p and math.exp(-d * kl) <= alpha:
            return a
    return d + 1


def _ref_wrap(s: np.ndarray, plan: EncodingPlan) -> dict:
    d, half, k = s.size, plan.modulus / 2, plan.k_stddevs
    margin = (1 - 1 / k) * half
    rms = math.sqrt(float(np.mean(s * s)))
    thr = math.sqrt(2 * math.log(2 * d / 1e-6)) * rms
    near = int(np.sum(np.abs(s) >= margin))
    outliers = int(np.sum(np.abs(s) > thr)) if rms > 0 else 0
    planned = math.erfc((k - 1) / math.sqrt(2))
    return {
        "near_wrap": near, "wrap_fraction": near / d, "wrap_margin": margin,
        "outliers": outliers, "outlier_threshold": thr,
        "expected_wraps": d * math.erfc(half / (rms * math.sqrt(2))) if rms > 0 else 0.0,
        "wrap_suspected": outliers > 0 or near >= _ref_binomial_upper(d, planned, 1e-6),
    }


def test_wrap_statistics_equal_the_reference() -> None:
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=16)
    plan = EncodingPlan.create(cfg, 64, 4, 4)
    mod, half = plan.modulus, plan.modulus // 2
    margin = (1 - 1 / plan.k_stddevs) * half
    g = np.random.default_rng(3)
    base = g.integers(-half // 2, half // 2, size=64)
    spike = np.zeros(64, dtype=np.int64)
    spike[5] = 1000
    vectors = {"zeros": np.zeros(64, dtype=np.int64), "spike": spike, "spread": base}
    limit = _ref_binomial_upper(64, math.erfc((plan.k_stddevs - 1) / math.sqrt(2)), 1e-6)
    for near in (limit - 1, limit):
        s = base.copy()
        s[:near] = np.where(np.arange(near) % 2 == 0, math.ceil(margin), -half)
        vectors[f"near{near}"] = s
    results = {}
    for name, s in vectors.items():
        out, err = _in_time(lambda s=s: Decoder(plan, SEED).decode((s % mod).astype(np.uint64), 4))
        assert err is None
        want = _ref_wrap(s.astype(np.float64), plan)
        assert out.wrap_report() == pytest.approx(want, rel=1e-12), name
        assert isinstance(out.wrap_report()["wrap_suspected"], bool)
        results[name] = (out.outliers, out.wrap_suspected)
    assert results["spike"] == (1, True) and results["zeros"] == (0, False)
    assert results[f"near{limit - 1}"] == (0, False) and results[f"near{limit}"] == (0, True)


@pytest.mark.parametrize(
    "make,n,match",
    [(lambda p: np.zeros(p.encoded_dim + 1, dtype=np.uint64), 2, r"shape \(73,\), the plan"),
     (lambda p: np.zeros((1, p.encoded_dim), dtype=np.uint64), 2, r"shape \(1, 72\)"),
     (lambda p: np.zeros(p.encoded_dim), 2, "dtype float64"),
     (lambda p: np.full(p.encoded_dim, p.modulus, dtype=np.uint64), 2, "entries >= 2\\^16"),
     (lambda p: np.zeros(p.encoded_dim, dtype=np.uint64), 0, "got 0"),
     (lambda p: np.zeros(p.encoded_dim, dtype=np.uint64), True, "got True"),
     (lambda p: np.zeros(p.encoded_dim, dtype=np.uint64), 2.0, "got 2.0")],
)
def test_decoder_refuses_bad_sums(make, n, match: str) -> None:
    plan = _plan_with_all()
    with pytest.raises(ValueError, match=match):
        Decoder(plan, SEED).decode(make(plan), n)


# ------------------------------------------------------------------------ rotation


@pytest.mark.parametrize(
    "dim,hada,dft", [(1, 1, 2), (2, 2, 2), (3, 4, 4), (5, 8, 6), (13, 16, 14), (64, 64, 64),
                     (65, 128, 66)],
)
def test_padded_dim(dim: int, hada: int, dft: int) -> None:
    assert (padded_dim(dim, "hadamard"), padded_dim(dim, "dft")) == (hada, dft)


def test_padded_dim_and_rotation_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        padded_dim(0, "hadamard")
    for call in (lambda: padded_dim(4, "fft"), lambda: rotate(np.ones(4), np.ones(4), "fft"),
                 lambda: unrotate(np.ones(4), np.ones(4), "fft", 4)):
        with pytest.raises(ValueError, match="unknown rotation 'fft'"):
            call()
    for bad in (b"", "text", None):
        with pytest.raises(ValueError, match=f"rotation seed must be non-empty bytes, got {bad!r}"):
            rotation_signs(bad, 8)


def test_rotation_signs_known_derivation() -> None:
    """Public signs: PCG64 seeded with the seed read as a little-endian integer, an int8
    draw in {0, 1} per coordinate, 1 -> +1 (what every device and the server compute)."""
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(SEED, "little")))
    bits = gen.integers(0, 2, size=40, dtype=np.int8)
    want = np.where(bits == 1, 1.0, -1.0)
    got = rotation_signs(SEED, 40)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rotation_signs(bytearray(SEED), 40), want)
    assert set(np.unique(got)) == {-1.0, 1.0}


@pytest.mark.parametrize("rotation", ["hadamard", "dft"])
@pytest.mark.parametrize("d", [2, 4, 8, 16, 32, 64, 128])
def test_rotate_and_unrotate_equal_the_dense_matrices(rotation: str, d: int) -> None:
    """Every number of Walsh-Hadamard levels (radix-4 passes plus one radix-2 pass when
    odd), on single vectors and batches of any leading shape, padded and truncated."""
    signs = rotation_signs(SEED + bytes([d]), d)
    mat = dense_rotation(signs, rotation)
    n = d - 1 if d > 2 else d
    x = np.random.default_rng(d).normal(size=(2, 3, n))
    xp = np.concatenate([x, np.zeros((2, 3, d - n))], axis=-1)
    y = rotate(x, signs, rotation)
    assert y.shape == (2, 3, d)
    np.testing.assert_allclose(y, xp @ mat.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rotate(x[1, 2], signs, rotation), mat @ xp[1, 2], atol=1e-12)
    back = unrotate(y, signs, rotation, n)
    assert back.shape == (2, 3, n)
    np.testing.assert_allclose(back, (y @ mat)[..., :n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12)
    z = np.random.default_rng(d + 1).normal(size=d)  # unrotate of any vector: R^T z
    np.testing.assert_allclose(unrotate(z, signs, rotation, d), mat.T @ z, atol=1e-12)


def test_rotation_of_a_long_vector_ends_and_is_right() -> None:
    d = 1024
    signs = rotation_signs(SEED, d)
    x = np.random.default_rng(9).normal(size=d)
    y, err = _in_time(lambda: rotate(x, signs, "hadamard"))
    assert err is None
    np.testing.assert_allclose(y, dense_rotation(signs, "hadamard") @ x, atol=1e-12)
    back, err = _in_time(lambda: unrotate(y, signs, "hadamard", d))
    assert err is None
    np.testing.assert_allclose(back, x, atol=1e-12)


@pytest.mark.parametrize("rotation", ["hadamard", "dft"])
def test_unrotate_of_strided_float32_or_fortran_input(rotation: str) -> None:
    """unrotate works on any array: a Fortran-ordered or strided batch gives the rows of
    its contiguous copy, float32 input is computed in float64."""
    d = 16
    signs = rotation_signs(SEED, d)
    y = np.random.default_rng(4).normal(size=(3, 2 * d))
    want = unrotate(np.ascontiguousarray(y[:, ::2]), signs, rotation, d)
    np.testing.assert_array_equal(unrotate(y[:, ::2], signs, rotation, d), want)
    f = np.asfortranarray(np.stack([y[:, :d], y[:, d:]]))  # (2, 3, d): rows not contiguous
    np.testing.assert_array_equal(unrotate(f, signs, rotation, d),
                                  unrotate(np.ascontiguousarray(f), signs, rotation, d))
    y32 = y[:, :d].astype(np.float32)
    np.testing.assert_array_equal(unrotate(y32, signs, rotation, d),
                                  unrotate(y32.astype(np.float64), signs, rotation, d))


# ------------------------------------------------- what a plug-in mechanism is handed


class _Recording(NoiseMechanism):
    """A plug-in that adds nothing and records what the encoder asks of it."""

    name = "rec_mutation_encoding"

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, float, float]] = []

    def add_noise(self, record, scale, l2_bound, l1_bound, rng):  # noqa: ANN001
        self.calls.append((int(np.size(record)), scale, l2_bound, l1_bound))
        return np.asarray(record, dtype=np.int64)

    def rdp(self, orders, l2_sens, l1_sens, local_scale, n_shares, dim):  # noqa: ANN001
        return np.zeros(len(orders))


def test_plug_in_gets_each_records_norm_bounds() -> None:
    """The contract of `NoiseMechanism.add_noise`: the update with (local, Delta2, Delta1),
    the count slot with (count local, m, m), the evaluation block with (eval local, 2m, 4m)
    (its L2 norm is <= 2m, its L1 norm <= 4m)."""
    rec = _Recording()
    register_mechanism(rec)
    try:
        cfg = DPConfig(mechanism=rec.name, bits=20, adaptive_clip=True, eval_buckets=3)
        plan = EncodingPlan.create(cfg, 16, 5, 5)
        Encoder(plan, SEED).encode(np.ones(16), _rng("plug"), [0.5, 3.0, 2.0])
    finally:
        MECHANISM_REGISTRY.pop(rec.name, None)
    m, e = plan.count_scale, plan.eval_scale
    assert plan.local_stddev > 0 and plan.count_local_stddev > 0 and plan.eval_local_stddev > 0
    assert rec.calls == [
        (plan.padded_dim, plan.local_stddev, plan.l2_sensitivity, plan.l1_sensitivity),
        (1, plan.count_local_stddev, m, m),
        (6, plan.eval_local_stddev, 2.0 * e, 4.0 * e),
    ]


# ------------------------------------------------------------ the round's RDP


def test_round_rdp_adds_the_count_slot_and_the_evaluation_block() -> None:
    """RDP(update) + RDP(count slot: Delta2 = Delta1 = m, one coordinate) + RDP(eval block:
    Delta2 = 2m, Delta1 = 4m, eval_dim coordinates), each from the mechanism's formula."""
    orders = [2.0, 3.0, 8.0, 32.0]
    # a ddgauss count slot with local std 1, where tau (and so the dimension) counts
    small_count = (DPConfig(mechanism="ddgauss", bits=8, noise_multiplier=0.5, adaptive_clip=True,
                            clipped_count_stddev=2.5), 8, 64, 64, 0)
    for cfg, dim, n, t, c in (PLANS[0], PLANS[14], small_count):
        plan = EncodingPlan.create(cfg, dim, n, t, c)
        ev = plan.privacy_event(n)
        h = n - c

        def f(a: float, b: float, s: float, k: int, h: int = h, mech: str = cfg.mechanism):
            if mech == "ddgauss":
                return ddgauss_rdp(orders, a, b, s, h, k)
            return skellam_rdp(orders, a, b, h * s**2)

        want = f(plan.l2_sensitivity, plan.l1_sensitivity, plan.local_stddev, plan.padded_dim)
        want = want + f(plan.count_scale, plan.count_scale, plan.count_local_stddev, 1)
        if cfg.eval_buckets:
            m = plan.eval_scale
            want = want + f(2 * m, 4 * m, plan.eval_local_stddev, cfg.eval_dim)
        np.testing.assert_allclose(ev.rdp(orders), want, rtol=1e-12)
    assert EncodingPlan.create(*PLANS[14][:4]).count_scale == 1
    assert EncodingPlan.create(*small_count[:4]).count_local_stddev == 1.0


# ------------------------------------------------------------------ encoder errors


def test_encoder_errors_name_the_row_and_the_counts() -> None:
    cfg = DPConfig(mechanism="ddgauss", bits=16, eval_buckets=2)
    plan = EncodingPlan.create(cfg, 8, 4, 4)
    enc = Encoder(plan, SEED)
    bad = np.zeros((3, 8))
    bad[2, 5] = np.nan
    ev = np.tile([0.5, 2.0, 1.0], (3, 1))
    rngs = [_rng("e", i) for i in range(3)]
    with pytest.raises(ValueError, match=r"^update contains NaN or infinite values \(row 2\)$"):
        enc.encode_batch(bad, rngs, ev)
    with pytest.raises(ValueError, match=r"^update contains NaN or infinite values$"):
        enc.encode(bad[2], rngs[0], ev[0])
    with pytest.raises(ValueError, match=r"^3 updates but 2 evaluation rows$"):
        enc.encode_batch(np.zeros((3, 8)), rngs, ev[:2])
    with pytest.raises(ValueError, match=r"needs its \(accuracy, examples, loss sum\)$"):
        enc.encode(np.zeros(8), rngs[0])
    plain = Encoder(EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=16), 8, 4, 4), SEED)
    with pytest.raises(ValueError, match="^evaluation stats given, but the plan has no "
                                         "evaluation block$"):
        plain.encode(np.zeros(8), rngs[0], [0.5, 2.0, 1.0])
    for cls in (Encoder, Decoder):
        with pytest.raises(TypeError, match="^plan must be an EncodingPlan, got dict$"):
            cls(plan.to_dict(), SEED)


def test_rounding_that_cannot_meet_its_bound_stops_after_1000_tries() -> None:
    """A plan whose Delta2 no rounding can meet (tampered with: `create` never makes one)
    fails loudly after 1000 tries of d uniforms each, instead of looping."""
    plan = EncodingPlan.create(DPConfig(mechanism="none", noise_multiplier=0.0, bits=16), 8, 2, 2)
    bad = dataclasses.replace(plan, l2_sensitivity=0.5)
    rng = _rng("stuck")
    x = np.full(8, 0.3)  # rotated and scaled: far from 0 in integer units
    err = _refusal(lambda: Encoder(bad, SEED).encode(x, rng))
    assert isinstance(err, RuntimeError)
    assert str(err) == "conditional rounding did not meet the norm bound 0.5 in 1000 tries"
    fresh = _rng("stuck")
    fresh.words(1000 * 8)
    np.testing.assert_array_equal(rng.words(4), fresh.words(4))


# -------------------------------------------------------------- decoder edge cases


def test_decoder_at_60_bits_and_without_optional_slots() -> None:
    """2^b - 1 is -1 even where float64 cannot hold 2^b - 1; a plan without the count slot
    or the evaluation block decodes neither."""
    plan = EncodingPlan.create(DPConfig(mechanism="none", noise_multiplier=0.0, bits=60), 8, 2, 2)
    v = np.zeros(plan.encoded_dim, dtype=np.uint64)
    v[0] = np.uint64((1 << 60) - 1)
    out, err = _in_time(lambda: Decoder(plan, SEED).decode(v, 2))
    assert err is None
    rot = dense_rotation(rotation_signs(SEED, 8), "hadamard")
    np.testing.assert_allclose(out.total, -plan.gamma * rot.T[:, 0], rtol=1e-12)
    assert out.clipped_count is None and out.evaluation is None
    with pytest.raises(ValueError, match=r"sum has shape \(8, 1\)"):
        Decoder(plan, SEED).decode(v[:, np.newaxis], 2)


def _wrap_plan(dim: int, rotation: str = "hadamard", modclip_prob: float = 1e-4) -> EncodingPlan:
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=16, rotation=rotation,
                   modclip_prob=modclip_prob)
    return EncodingPlan.create(cfg, dim, 2, 2)


@pytest.mark.parametrize(
    "name,plan_args,coords,suspected",
    [
        # d = 1: no number of near-wrap values is unlikely enough (p > 1e-6): never flagged
        ("d1-zero", (1,), [0], False),
        ("d1-near", (1, "hadamard", 1.2e-7), ["near"], False),
        # d = 2: both near the wrap has probability p^2 < 1e-6: flagged
        ("d2-both", (2, "dft"), ["near", "-near"], True),
        ("d2-one", (2, "dft"), ["near", 0], False),
        # a tiny planned rate (modclip 1e-12): one near-wrap value is flagged
        ("d64-one", (64, "hadamard", 1e-12), ["near"], True),
        # a lone +-1 is an outlier, whatever the scale
        ("tiny-spike", (64,), [1], True),
    ],
)
def test_wrap_flags_at_small_dimensions(name: str, plan_args: tuple, coords: list,
                                        suspected: bool) -> None:
    plan = _wrap_plan(*plan_args)
    d, half = plan.padded_dim, plan.modulus // 2
    near = math.ceil((1 - 1 / plan.k_stddevs) * half)
    s = np.random.default_rng(1).integers(-half // 2, half // 2, size=d) if d > 8 else (
        np.zeros(d, dtype=np.int64))
    if name == "tiny-spike":
        s[:] = 0
    for i, c in enumerate(coords):
        s[i] = {"near": near, "-near": -near}.get(c, c)
    out, err = _in_time(lambda: Decoder(plan, SEED).decode((s % plan.modulus).astype(np.uint64),
                                                           2))
    assert err is None
    assert out.wrap_report() == pytest.approx(_ref_wrap(s.astype(np.float64), plan), rel=1e-12)
    assert out.wrap_suspected is suspected


def assert_wrap_flagged_from_the_limit(plan: EncodingPlan, seed: int) -> None:
    """A sum with one coordinate short of the Chernoff limit of near-wrap coordinates is
    not flagged, one at the limit is; the whole report matches the reference."""
    d, half = plan.padded_dim, plan.modulus // 2
    limit = _ref_binomial_upper(d, math.erfc((plan.k_stddevs - 1) / math.sqrt(2)), 1e-6)
    base = np.random.default_rng(seed).integers(-half // 2, half // 2, size=d)
    margin = math.ceil((1 - 1 / plan.k_stddevs) * half)
    for near, flagged in ((limit - 1, False), (limit, True)):
        s = base.copy()
        s[:near] = margin
        out, err = _in_time(lambda s=s: Decoder(plan, SEED).decode(
            (s % plan.modulus).astype(np.uint64), 2))
        assert err is None
        assert out.wrap_report() == pytest.approx(_ref_wrap(s.astype(np.float64), plan),
                                                  rel=1e-12)
        assert (out.near_wrap, out.outliers, out.wrap_suspected) == (near, 0, flagged)


def test_wrap_near_limit_at_1024_coordinates() -> None:
    plan = _wrap_plan(1024)
    assert plan.padded_dim == 1024
    assert_wrap_flagged_from_the_limit(plan, 8)
