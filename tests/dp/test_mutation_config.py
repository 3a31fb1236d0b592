"""What a DPConfig selects, checked where older tests let mutants through (issue 16):

- `DPConfig` refuses every out-of-range field with an error naming the field and the bad
  value, accepts the edges of every range, and travels through `to_dict`/`from_dict`;
- the mechanism registry resolves names from scratch (its plug-in resolver is built on
  first need, for the `secagg_dp.mechanisms` entry points), and each mechanism adds
  exactly the share `dp.noise` draws from the device's generator at the plan's scale;
- the generator a mechanism refuses is named, with the place that refused it.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re

import numpy as np
import pytest

from dp import DPConfig, DPConfigError, EncodingPlan, noise
from dp.mechanisms import MECHANISM_REGISTRY, NoiseMechanism, gaussian_rdp, get_mechanism
from dp.prng import SecureRng

# ----------------------------------------------------------------------- DPConfig

BAD_FIELDS = [
    ("mechanism", "laplace"),
    ("mechanism", 3),
    ("rotation", "random"),
    ("clip", 0.0),
    ("clip", -1.5),
    ("clip", math.inf),
    ("clip", math.nan),
    ("clip", "1"),
    ("clip", True),
    ("noise_multiplier", -0.5),
    ("noise_multiplier", math.nan),
    ("bits", 20.0),
    ("bits", True),
    ("bits", 7),
    ("bits", 63),
    ("beta", 1.0),
    ("beta", -0.1),
    ("modclip_prob", 0.0),
    ("modclip_prob", 1.0),
    ("delta", 0.0),
    ("delta", 1.0),
    ("delta", math.inf),
    ("adaptive_clip", 1),
    ("target_quantile", 0.0),
    ("target_quantile", 1.0),
    ("clip_lr", -0.1),
    ("clipped_count_stddev", -1.0),
    ("clipped_count_stddev", "2"),
    ("eval_buckets", 1),
    ("eval_buckets", 101),
    ("eval_buckets", True),
    ("eval_buckets", 4.0),
    ("eval_max_examples", 0),
    ("eval_max_examples", 1.5),
    ("eval_noise_ratio", 0.0),
    ("eval_noise_ratio", -2.0),
    ("eval_max_loss", 0.0),
]


@pytest.mark.parametrize("field,bad", BAD_FIELDS)
def test_config_refuses_each_bad_field_naming_it_and_the_value(field: str, bad: object) -> None:
    with pytest.raises(DPConfigError, match=re.escape(field) + ".*" + re.escape(repr(bad))):
        DPConfig(**{field: bad})  # type: ignore[arg-type]


def test_clipped_count_stddev_zero_only_without_adaptive_noise() -> None:
    with pytest.raises(DPConfigError, match="clipped_count_stddev must be > 0, got 0.0"):
        DPConfig(adaptive_clip=True, clipped_count_stddev=0.0)
    # a zero stddev is allowed where it adds nothing: no adaptive clipping, or no noise
    assert DPConfig(clipped_count_stddev=0.0).clipped_count_stddev == 0.0
    assert DPConfig(mechanism="none", noise_multiplier=0.0, adaptive_clip=True,
                    clipped_count_stddev=0.0).adaptive_clip


@pytest.mark.parametrize("edge", [
    {"bits": 8}, {"bits": 62}, {"beta": 0.0}, {"noise_multiplier": 0.0}, {"clip_lr": 0.0},
    {"eval_buckets": 2}, {"eval_buckets": 100}, {"eval_max_examples": 1}, {"clip": 1},
    {"rotation": "dft"}, {"delta": 0.999}, {"modclip_prob": 1e-300},
])
def test_config_accepts_the_edges_of_every_range(edge: dict) -> None:
    cfg = DPConfig(**edge)
    key, value = next(iter(edge.items()))
    assert getattr(cfg, key) == value


def test_config_round_trips_and_from_dict_names_what_is_wrong() -> None:
    cfg = DPConfig(mechanism="skellam", clip=0.3, noise_multiplier=1.7, bits=18, beta=0.0,
                   rotation="dft", delta=1e-7, adaptive_clip=True, clipped_count_stddev=4.0,
                   eval_buckets=5, eval_noise_ratio=3.0)
    assert DPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(DPConfigError, match="needs a dict, got list"):
        DPConfig.from_dict([cfg.to_dict()])  # type: ignore[arg-type]
    with pytest.raises(DPConfigError, match=r"unknown DPConfig keys: \['bogus', 'zz'\]"):
        DPConfig.from_dict({**cfg.to_dict(), "zz": 1, "bogus": 2})


# ------------------------------------------------------------- mechanism registry


class _EntryPointMechanism(NoiseMechanism):
    name = "from_entry_point"

    def add_noise(self, record, scale, l2_bound, l1_bound, rng):  # type: ignore[override]
        return record

    def rdp(self, orders, l2_sens, l1_sens, local_scale, n_shares, dim):  # type: ignore[override]
        return np.zeros(len(orders))


def test_registry_resolves_entry_points_of_its_group_from_scratch(monkeypatch) -> None:
    group_asked: list[object] = []

    def fake_entry_points(*, group: str):
        group_asked.append(group)
        if group != "secagg_dp.mechanisms":
            return []
        return [importlib.metadata.EntryPoint(
            "from_entry_point", f"{__name__}:_EntryPointMechanism", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(MECHANISM_REGISTRY, "_resolver", None)  # as in a fresh process
    try:
        assert MECHANISM_REGISTRY.names() == [
            "ddgauss", "skellam", "gaussian", "none", "from_entry_point"]
        mech = get_mechanism("from_entry_point")
        assert isinstance(mech, _EntryPointMechanism)
        assert MECHANISM_REGISTRY["from_entry_point"] is mech
        with pytest.raises(ValueError, match=r"^unknown mechanism 'laplace'; known: ddgauss, "
                                             r"skellam, gaussian, none, from_entry_point"):
            get_mechanism("laplace")
        assert group_asked == ["secagg_dp.mechanisms"]
    finally:
        MECHANISM_REGISTRY.pop("from_entry_point", None)


# ------------------------------------------------------------ the noise each adds


def _rng() -> SecureRng:
    return SecureRng.for_simulation(5, "mechanism share")


@pytest.mark.parametrize("name,draw", [
    ("ddgauss", lambda rng, s, n: noise.discrete_gaussian(rng, s, n)),
    ("skellam", lambda rng, s, n: noise.skellam(rng, s**2, n)),
    ("gaussian", lambda rng, s, n: np.rint(noise.gaussian(rng, s, n)).astype(np.int64)),
    ("none", lambda rng, s, n: np.zeros(n, dtype=np.int64)),
])
def test_each_mechanism_adds_the_share_dp_noise_draws(name: str, draw) -> None:
    record = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    out = get_mechanism(name).add_noise(record, 7.0, 10.0, 30.0, _rng())
    assert out.dtype == np.int64 and out.shape == record.shape
    share = draw(_rng(), 7.0, record.size).reshape(record.shape)
    assert np.array_equal(out - record, share)
    assert name == "none" or np.any(share != 0)


def test_records_come_back_as_int64() -> None:
    out = get_mechanism("none").add_noise(np.array([1.0, -2.0, 3.0]), 0.0, 1.0, 1.0, _rng())
    assert out.dtype == np.int64 and out.tolist() == [1, -2, 3]


@pytest.mark.parametrize("name,where", [
    ("ddgauss", "DiscreteGaussian"), ("skellam", "Skellam"),
    ("gaussian", "RoundedGaussian"), ("none", "NoNoise"),
])
def test_a_numpy_generator_is_refused_naming_it_and_the_caller(name: str, where: str) -> None:
    with pytest.raises(TypeError, match=rf"^{where}\.add_noise needs a dp\.prng\.SecureRng, got "
                                        r"numpy\.random\._generator\.Generator: "):
        get_mechanism(name).add_noise(np.zeros(4, dtype=np.int64), 3.0, 1.0, 1.0,
                                      np.random.default_rng(0))


def test_no_noise_is_infinite_epsilon_and_no_local_scale() -> None:
    mech = get_mechanism("none")
    assert mech.local_scale(5.0) == 0.0
    rdp = mech.rdp([1.5, 2.0, 64.0], 1.0, 1.0, 0.0, 10, 100)
    assert rdp.shape == (3,) and np.all(np.isposinf(rdp))


def test_rounded_gaussian_rdp_is_the_events_gaussian() -> None:
    # the mechanism's own RDP and the accountant's z_eff of the plan's event agree
    cfg = DPConfig(mechanism="gaussian", noise_multiplier=1.3, bits=18)
    event = EncodingPlan.create(cfg, 500, 20, 15).privacy_event(17)
    orders = [1.5, 2.0, 10.0, 128.0]
    np.testing.assert_allclose(
        event.rdp(orders), gaussian_rdp(orders, event.gaussian_noise_multiplier), rtol=1e-12)
    mech = get_mechanism("gaussian")
    assert mech.noise_multiplier(4.0, 3.0, 16) == pytest.approx(3.0)  # sqrt(16) * 3 / 4
    assert mech.noise_multiplier(0.5, 3.0, 16) == pytest.approx(24.0)  # below 1 as well
    assert mech.noise_multiplier(0.0, 3.0, 16) == math.inf


def test_one_discrete_gaussian_share_is_the_discrete_gaussian_bound() -> None:
    # n = 1: tau = 0, so eps(alpha) = alpha Delta2^2 / (2 s^2) (Canonne, Kamath, Steinke)
    orders = [1.5, 2.0, 8.0]
    got = get_mechanism("ddgauss").rdp(orders, 3.0, 9.0, 2.0, 1, 50)
    np.testing.assert_allclose(got, [a * 9.0 / 8.0 for a in orders], rtol=1e-14)


@pytest.mark.parametrize("target,scale", [
    (0.0, 0.0), (-1.0, 0.0),  # no noise asked: none added (z = 0 tests the encoding)
    (0.2, 1.0), (2.5, 3.0), (3.0, 3.0),
    (3.0 + 1e-12, 3.0),  # float noise above an integer is not a whole unit more
    (3.001, 4.0),
])
def test_discrete_gaussian_scale_is_the_target_rounded_up(target: float, scale: float) -> None:
    assert get_mechanism("ddgauss").local_scale(target) == scale


# ---------------------------------------------------------------------- generator


def test_simulation_generator_shows_its_seed_and_labels() -> None:
    rng = SecureRng.for_simulation(7, "round", 3)
    assert repr(rng) == ("SecureRng(SIMULATION ONLY, not secret: deterministic key from "
                         "seed/labels 7, 'round', 3)")


@pytest.mark.parametrize(
    "field",
    ["clip", "noise_multiplier", "beta", "modclip_prob", "delta", "target_quantile",
     "clip_lr", "clipped_count_stddev", "eval_noise_ratio", "eval_max_loss"],
)
@pytest.mark.parametrize("bad", [float("nan"), "1.0"])
def test_a_non_finite_or_non_numeric_field_is_refused_by_its_exact_name(
    field: str, bad: object
) -> None:
    """The error starts with the field's own name, as a user types it on the command line
    or in TOML (a message naming another spelling would send them to the wrong flag)."""
    kind = "finite" if isinstance(bad, float) else "a number"
    with pytest.raises(DPConfigError, match=rf"^{field} must be {kind}, got {bad!r}$"):
        DPConfig(**{field: bad})  # type: ignore[arg-type]


def test_an_unknown_rotation_is_refused_with_the_choices_listed() -> None:
    with pytest.raises(DPConfigError,
                       match=r"^rotation must be one of hadamard, dft, got 'haar'$"):
        DPConfig(rotation="haar")
