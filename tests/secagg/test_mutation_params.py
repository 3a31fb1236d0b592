"""Round parameters, the device's policy, the protocol config and the plug-in resolver:
every check at its boundary, with its exact refusal, and the thresholds against a
reference computed in exact arithmetic (issue 16: mutation testing found boundaries that
no test pinned, e.g. a policy whose sigma was never used or a threshold fraction of 1
refused)."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from secagg import ClientPolicy, PolicyError, ProtocolConfig, RoundParams
from secagg.graph import harary_neighbours
from secagg.params import complete_threshold, split_view_floor
from secagg.plugins import (
    PluginError,
    PluginRegistry,
    allow_imports,
    imports_allowed,
    is_import_path,
    load_attr,
)
from tests.matching import exact as _exact

from ._helpers import det_random

SEED = bytes(range(32))


def _base(**change: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "round_id": 7,
        "participants": tuple(range(6)),
        "dim": 3,
        "bits": 16,
        "threshold": 4,
        "graph": "complete",
        "degree": None,
        "graph_seed": SEED,
    }
    d.update(change)
    return d


KEYS = {c: bytes([c]) * 32 for c in range(12)}

# ------------------------------------------------------------------ RoundParams


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"round_id": -1}, "round_id must be an int >= 0, got -1"),
        ({"round_id": True}, "round_id must be an int >= 0, got True"),
        ({"round_id": "7"}, "round_id must be an int >= 0, got '7'"),
        ({"participants": ()}, "participants must be a non-empty tuple, got ()"),
        ({"participants": {0, 1}}, "participants must be a non-empty tuple, got {0, 1}"),
        ({"participants": (0, -1)}, "participant ids must be ints >= 0, got -1"),
        ({"participants": (0, True)}, "participant ids must be ints >= 0, got True"),
        ({"participants": (0, 2, 1)}, "participants must be sorted and unique"),
        ({"participants": (0, 1, 1)}, "participants must be sorted and unique"),
        ({"dim": 0}, "dim must be an int >= 1, got 0"),
        ({"dim": 2.0}, "dim must be an int >= 1, got 2.0"),
        ({"bits": 7}, "bits must be an int in [8, 62], got 7"),
        ({"bits": 63}, "bits must be an int in [8, 62], got 63"),
        ({"bits": 16.0}, "bits must be an int in [8, 62], got 16.0"),
        ({"threshold": 0}, "threshold must be an int in [1, 6] (neighbours + 1), got 0"),
        ({"threshold": 7}, "threshold must be an int in [1, 6] (neighbours + 1), got 7"),
        ({"threshold": 4.0}, "threshold must be an int in [1, 6] (neighbours + 1), got 4.0"),
        ({"min_survivors": -1}, "min_survivors must be an int >= 0, got -1"),
        ({"min_survivors": 5.0}, "min_survivors must be an int >= 0, got 5.0"),
        ({"min_survivors": 3}, "min_survivors must be in [threshold=4, 6], got 3"),
        ({"min_survivors": 7}, "min_survivors must be in [threshold=4, 6], got 7"),
        ({"graph_seed": SEED[:31]}, "graph_seed must be 32 bytes"),
        ({"graph_seed": SEED + b"x"}, "graph_seed must be 32 bytes"),
        ({"graph_seed": "s" * 32}, "graph_seed must be 32 bytes"),
        ({"active": 1}, "active must be a bool, got 1"),
        ({"identity_keys": {"0": KEYS[0]}}, "identity_keys ids must be ints, got '0'"),
        ({"identity_keys": {0: KEYS[0][:31]}}, "identity key of 0 must be 32 raw bytes"),
        ({"identity_keys": {0: "k" * 32}}, "identity key of 0 must be 32 raw bytes"),
        ({"active": True}, "active mode needs identity_keys for every participant"),
        (
            {
                "active": True,
                "participants": tuple(range(12)),
                "threshold": 7,
                "identity_keys": {0: KEYS[0]},
            },
            "identity_keys missing for participants [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
        ),
        (
            {"active": True, "threshold": 3, "identity_keys": KEYS},
            "active mode needs threshold >= 4 (2t > 6 share holders) even with no corrupt "
            "client, got 3: a server could split the holders into two groups of t and "
            "unmask an input",
        ),
    ],
)
def test_round_params_refuse_with_the_bad_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exact(message)):
        RoundParams(**_base(**change))


def test_round_params_boundaries_are_accepted() -> None:
    p = RoundParams(**_base(round_id=0, participants=[0, 1, 2, 3, 4, 5], dim=1, bits=8))
    assert (p.round_id, p.participants, p.dim, p.bits, p.modulus) == (0, tuple(range(6)), 1, 8, 256)
    assert p.min_survivors == 4  # 0 means t
    assert RoundParams(**_base(bits=62)).modulus == 1 << 62
    assert RoundParams(**_base(threshold=6, min_survivors=6)).min_survivors == 6
    assert RoundParams(**_base(threshold=1, min_survivors=1)).min_survivors == 1
    assert RoundParams(**_base(min_survivors=4)).min_survivors == 4
    assert RoundParams(**_base(min_survivors=5)).min_survivors == 5
    # active: t exactly at the split-view floor (2t > 6) passes
    keys = dict(KEYS)
    a = RoundParams(**_base(active=True, threshold=4, identity_keys=keys))
    keys[0] = bytes(32)  # the caller's dict changes later: the params keep their copy
    assert a.identity_keys == {c: KEYS[c] for c in range(12)}
    assert a.is_participant(5) and not a.is_participant(6)


def test_hash_covers_every_field() -> None:
    """Params differing in any one field (identity keys included) hash differently; equal
    params hash equally."""
    base = RoundParams(**_base(active=True, identity_keys=KEYS))
    variants = [
        base,
        dataclasses.replace(base, round_id=8),
        dataclasses.replace(base, threshold=5, min_survivors=5),
        dataclasses.replace(base, graph_seed=bytes(32)),
        dataclasses.replace(base, min_survivors=5),
        dataclasses.replace(base, identity_keys={**KEYS, 3: bytes(32)}),
        dataclasses.replace(base, active=False, identity_keys=None),
    ]
    assert len({hash(v) for v in variants}) == len(variants)
    assert hash(RoundParams(**_base(active=True, identity_keys=dict(KEYS)))) == hash(base)


def test_neighbours_of_a_non_participant_is_refused() -> None:
    p = RoundParams(**_base())
    assert p.neighbours(0) == (1, 2, 3, 4, 5)
    assert p.neighbour_set(0) == frozenset({1, 2, 3, 4, 5})
    assert p.neighbour_set(0) is p.neighbour_set(0)
    assert p.neighbour_set(5) == frozenset(range(5))
    with pytest.raises(ValueError, match=_exact("client 9 is not a participant of round 7")):
        p.neighbours(9)
    h = RoundParams(
        **_base(participants=tuple(range(0, 40, 2)), graph="harary", degree=4, threshold=3)
    )
    parts = list(h.participants)
    for rid, seed in ((7, SEED), (8, SEED), (7, bytes(32))):  # each input changes the graph
        q = dataclasses.replace(h, round_id=rid, graph_seed=seed)
        assert {c: q.neighbours(c) for c in parts} == harary_neighbours(parts, 4, seed, rid)
    assert harary_neighbours(parts, 4, SEED, 8) != harary_neighbours(parts, 4, SEED, 7)
    assert harary_neighbours(parts, 4, bytes(32), 7) != harary_neighbours(parts, 4, SEED, 7)


@pytest.mark.parametrize(
    ("holders", "corrupt", "want"),
    [(0, 0, 1), (1, 0, 1), (6, 0, 4), (7, 0, 4), (10, 2, 7), (10, 3, 7), (49, 26, 38)],
)
def test_split_view_floor_is_the_least_t_with_2t_above_holders_plus_corrupt(
    holders: int, corrupt: int, want: int
) -> None:
    assert split_view_floor(holders, corrupt) == want
    assert 2 * want > holders + corrupt and 2 * (want - 1) <= holders + corrupt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0), "holders must be an int >= 0, got -1"),
        ((True, 0), "holders must be an int >= 0, got True"),
        ((4, "1"), "corrupt_holders must be an int >= 0, got '1'"),
        ((4, -1), "corrupt_holders must be an int >= 0, got -1"),
    ],
)
def test_split_view_floor_refuses(args: tuple[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exact(message)):
        split_view_floor(*args)


def _reference_complete_threshold(n: int, dropout: str, corrupt: str, active: bool) -> int:
    """complete_threshold's docstring in exact rationals."""
    if n <= 1:
        return 1
    c = math.floor(Fraction(corrupt) * n)
    cap = math.floor(n * (1 - Fraction(dropout)))
    lowest = next(t for t in range(2, n + 2) if t > c and (not active or 2 * t > n + c))
    t = max(2, 2 * n // 3 + 1, lowest)
    if cap >= lowest:
        t = min(t, cap)
    return min(t, n)


def test_complete_threshold_matches_the_exact_reference() -> None:
    fractions = ["0", "0.1", "0.29", "0.3", "0.5", "0.7", "0.71", "0.9"]
    for n in list(range(1, 40)) + [99, 100, 101]:
        for d in fractions:
            for c in fractions:
                for active in (False, True):
                    want = _reference_complete_threshold(n, d, c, active)
                    got = complete_threshold(n, float(d), float(c), active)
                    assert got == want, (n, d, c, active)


def test_threat_model_violation_at_each_boundary() -> None:
    p = RoundParams(**_base(participants=tuple(range(10)), threshold=7))
    assert p.threat_model_violation(0.6) is None  # c = 6 < t
    assert p.threat_model_violation(0.7) == (
        "threshold 7 <= 7, the corrupt share holders expected at corrupt=0.7: they could "
        "rebuild a secret on their own"
    )
    two = RoundParams(**_base(participants=(0, 1), threshold=1, min_survivors=1))
    assert two.threat_model_violation(0.0) == "threshold 1 < 2: a single share reveals the secret"
    assert (
        RoundParams(**_base(participants=(0, 1), threshold=2)).threat_model_violation(0.0) is None
    )
    assert RoundParams(**_base(participants=(3,), threshold=1)).threat_model_violation(0.5) is None
    act = RoundParams(
        **_base(participants=tuple(range(10)), threshold=6, active=True, identity_keys=KEYS)
    )
    assert act.threat_model_violation(0.1) is None  # c = 1: 2 * 6 > 10 + 1
    assert act.threat_model_violation(0.2) == (
        "active threshold 6 < 7: with 10 share holders and up to 2 corrupt ones "
        "(corrupt=0.2) a lying server can split the holders into two views of t and unmask "
        "an input (needs 2t > holders + corrupt holders)"
    )


def test_corrupt_holder_bound_and_its_default_sigma() -> None:
    """On H(500, 20) the statistical bound is 16 at sigma 40 and 17 at sigma 41: t = 17
    is safe at the default and unsafe one bit further."""
    h = RoundParams(
        **_base(participants=tuple(range(500)), graph="harary", degree=20, threshold=17)
    )
    assert h.corrupt_holder_bound(0.1) == 16 and h.corrupt_holder_bound(0.1, 41) == 17
    assert h.threat_model_violation(0.1) is None
    assert h.threat_model_violation(0.1, 41) is not None
    assert h.corrupt_holder_bound(0) == 0
    p = RoundParams(**_base(participants=(0, 1), threshold=2))
    assert p.corrupt_holder_bound(0.5) == 1
    assert p.corrupt_holder_bound(0.99) == 1  # capped at n - 1
    assert RoundParams(**_base(participants=(4,), threshold=1)).corrupt_holder_bound(0.9) == 0
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=_exact(f"corrupt must be in [0, 1), got {bad!r}")):
            p.corrupt_holder_bound(bad)  # type: ignore[arg-type]


def test_create_is_the_rule_with_the_drawn_seed() -> None:
    rb = det_random(b"create")
    want_seed = det_random(b"create")(32)
    p = RoundParams.create(3, [9, 1, 5, 0], 10, 20, random_bytes=rb)
    assert (p.round_id, p.participants, p.dim, p.bits) == (3, (0, 1, 5, 9), 10, 20)
    assert (p.graph, p.degree, p.active, p.identity_keys) == ("complete", None, False, None)
    assert p.graph_seed == want_seed
    assert p.threshold == complete_threshold(4, 0.1, 0.1) == p.min_survivors
    big = RoundParams.create(0, range(100), 4, 16, min_survivors=0.7)
    assert (big.threshold, big.min_survivors) == (67, 70)
    assert RoundParams.create(0, range(100), 4, 16, min_survivors=0.5).min_survivors == 67
    cfg = ProtocolConfig(graph="complete", dropout=0.4, corrupt=0.1, active=True, min_survivors=0.9)
    act = RoundParams.create(
        0, range(100), 4, 16, config=cfg, identity_keys={c: SEED for c in range(100)}
    )
    assert (act.graph, act.threshold, act.active, act.min_survivors) == ("complete", 60, True, 90)
    with pytest.raises(ValueError, match=_exact("participants contain duplicates")):
        RoundParams.create(0, [1, 2, 2], 4, 16)
    # the knobs are checked as a ProtocolConfig before anything is chosen
    for kw, message in (
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"dropout": 0.5, "corrupt": 0.5}, "dropout + corrupt must be <= 0.9, got 0.5 + 0.5"),
        ({"min_survivors": 1.5}, "min_survivors must be a fraction in [0, 1], got 1.5"),
        (
            {"graph": "ring"},
            "unknown graph 'ring'; known: complete, harary, or package.module:Attr",
        ),
    ):
        with pytest.raises(ValueError, match=_exact(message)):
            RoundParams.create(0, range(5), 4, 16, **kw)


def test_from_dict_defaults_and_refusals() -> None:
    p = RoundParams(**_base())
    d = p.to_dict()
    for key in ("active", "identity_keys", "min_survivors"):
        del d[key]
    q = RoundParams.from_dict(d)
    assert q == p and q.active is False and q.min_survivors == 4
    a = RoundParams(**_base(active=True, identity_keys=KEYS))
    assert RoundParams.from_dict(a.to_dict()) == a
    full = a.to_dict()
    cases: list[tuple[Any, str]] = [
        ([full], "RoundParams.from_dict needs a mapping"),
        (
            {k: v for k, v in full.items() if k not in ("dim", "graph")},
            "RoundParams: missing fields ['dim', 'graph']",
        ),
        ({**full, "zz": 1, "extra": 2}, "RoundParams: unknown fields ['extra', 'zz']"),
        ({**full, "participants": "012345"}, "participants must be a list"),
        ({**full, "identity_keys": [1]}, "identity_keys must be an object"),
        ({**full, "identity_keys": {"x": "AAAA"}}, "identity_keys key 'x' is not an id"),
        ({**full, "identity_keys": {"0": "!!"}}, "identity_keys[0] is not valid base64"),
        ({**full, "graph_seed": "!!"}, "graph_seed is not valid base64"),
        ({**full, "graph_seed": 5}, "graph_seed must be a base64 string, got int"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=_exact(message)):
            RoundParams.from_dict(bad)


# ------------------------------------------------------------------ ClientPolicy


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"min_threshold_fraction": 1.01},
            "ClientPolicy.min_threshold_fraction must be in [0, 1], got 1.01",
        ),
        (
            {"min_threshold_fraction": "0.5"},
            "ClientPolicy.min_threshold_fraction must be a finite number, got '0.5'",
        ),
        (
            {"min_threshold_fraction": float("nan")},
            "ClientPolicy.min_threshold_fraction must be a finite number, got nan",
        ),
        ({"corrupt": 1.0}, "ClientPolicy.corrupt must be in [0, 1), got 1.0"),
        ({"corrupt": True}, "ClientPolicy.corrupt must be a finite number, got True"),
        ({"sigma": 0}, "ClientPolicy.sigma must be > 0, got 0"),
        ({"sigma": float("inf")}, "ClientPolicy.sigma must be a finite number, got inf"),
        (
            {"min_cohort": 1},
            "ClientPolicy cohort range must satisfy 2 <= min_cohort <= max_cohort, "
            "got [1, 1000000]",
        ),
        ({"max_cohort": 2.5}, "ClientPolicy.max_cohort must be an int, got 2.5"),
        (
            {"min_bits": 20, "max_bits": 16},
            "ClientPolicy bits range must satisfy 8 <= min_bits <= max_bits <= 62, got [20, 16]",
        ),
        (
            {"min_survivors_fraction": -0.1},
            "ClientPolicy.min_survivors_fraction must be in [0, 1], got -0.1",
        ),
        ({"require_pinned_keys": 0}, "ClientPolicy.require_pinned_keys must be a bool, got 0"),
        ({"min_cohort": 3.0}, "ClientPolicy.min_cohort must be an int, got 3.0"),
        ({"min_bits": "8"}, "ClientPolicy.min_bits must be an int, got '8'"),
        ({"max_bits": True}, "ClientPolicy.max_bits must be an int, got True"),
        ({"sigma": "40"}, "ClientPolicy.sigma must be a finite number, got '40'"),
        (
            {"min_survivors_fraction": None},
            "ClientPolicy.min_survivors_fraction must be a finite number, got None",
        ),
        ({"allowed_graphs": ()}, "ClientPolicy.allowed_graphs must not be empty"),
        ({"allowed_graphs": "harary"}, "ClientPolicy.allowed_graphs must be a tuple, got 'harary'"),
        (
            {"allowed_graphs": {"harary"}},
            "ClientPolicy.allowed_graphs must be a tuple, got {'harary'}",
        ),
        (
            {"allowed_graphs": ("harary", "ring")},
            "ClientPolicy.allowed_graphs: unknown graph 'ring'; known: complete, harary, or "
            "package.module:Attr",
        ),
    ],
)
def test_policy_refuses_with_the_bad_value(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exact(message)):
        ClientPolicy(**kw)


def test_policy_range_ends_are_accepted() -> None:
    """Every limit accepts its own end: a fraction of 1 means t = all holders."""
    p = RoundParams(**_base(participants=tuple(range(10)), threshold=10, min_survivors=10))
    ClientPolicy(
        min_threshold_fraction=1.0,
        min_survivors_fraction=1.0,
        min_cohort=10,
        max_cohort=10,
        min_bits=16,
        max_bits=16,
        corrupt=0.0,
    ).check(p)
    q = RoundParams(**_base(participants=tuple(range(10)), threshold=7))
    ClientPolicy(min_threshold_fraction=0.7, min_survivors_fraction=0.7).check(q)  # 0.7*10 = 7
    ClientPolicy(corrupt=0.6).check(q)  # c = 6 < 7
    assert ClientPolicy(sigma=0.5).sigma == 0.5  # any positive sigma


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            dict(min_threshold_fraction=0.71),
            "round 7: threshold 7 is below this device's minimum 8 (0.71 of 10 share holders)",
        ),
        (
            dict(min_survivors_fraction=0.71),
            "round 7: min_survivors 7 is below this device's minimum 8 (0.71 of 10 participants)",
        ),
        (
            dict(min_cohort=11),
            "round 7: 10 participants, this device accepts [11, 1000000]",
        ),
        (dict(max_cohort=9), "round 7: 10 participants, this device accepts [3, 9]"),
        (dict(min_bits=17), "round 7: bits=16, this device accepts [17, 62]"),
        (dict(max_bits=15), "round 7: bits=16, this device accepts [8, 15]"),
        (
            dict(allowed_graphs=("harary",)),
            "round 7: graph 'complete' is not allowed by this device (allowed: ('harary',))",
        ),
        (
            dict(require_active=True),
            "round 7 is not in active mode, which this device requires (without the "
            "consistency check a lying server can unmask an input)",
        ),
        (
            dict(corrupt=0.7),
            "round 7: threshold 7 <= 7, the corrupt share holders expected at corrupt=0.7: "
            "they could rebuild a secret on their own",
        ),
    ],
)
def test_policy_check_refuses_with_the_rule_and_value(policy: dict[str, Any], message: str) -> None:
    q = RoundParams(**_base(participants=tuple(range(10)), threshold=7))
    with pytest.raises(PolicyError, match=_exact(message)):
        ClientPolicy(**policy).check(q)
    ClientPolicy(allowed_graphs=["complete"], require_active=False).check(q)


def test_policy_uses_its_own_sigma_on_a_harary_round() -> None:
    p = RoundParams.create(0, range(1000), 4, 16, graph="harary", random_bytes=det_random())
    assert (p.degree, p.threshold) == (48, 27)
    ClientPolicy().check(p)
    with pytest.raises(
        PolicyError,
        match=_exact(
            "round 0: threshold 27 <= 31, the corrupt share holders expected at corrupt=0.1: "
            "they could rebuild a secret on their own"
        ),
    ):
        ClientPolicy(sigma=60).check(p)


def test_policy_checks_identity_keys_against_its_pins() -> None:
    a = RoundParams(
        **_base(participants=tuple(range(12)), threshold=7, active=True, identity_keys=KEYS)
    )
    ClientPolicy().check(a, dict(KEYS))
    ClientPolicy().check(a)  # no pins and not required
    ClientPolicy(require_active=True, require_pinned_keys=True).check(a, KEYS)
    with pytest.raises(
        PolicyError,
        match=_exact(
            "round 7 is in active mode but this device has no pinned identity keys: the round's "
            "keys come from the server and prove nothing"
        ),
    ):
        ClientPolicy(require_pinned_keys=True).check(a)
    swapped = {**KEYS, 0: b"\xff" * 32, 11: bytes(32)}
    with pytest.raises(
        PolicyError,
        match=_exact(
            "round 7: identity keys of participants [0, 11] differ from the keys pinned on this "
            "device (the server substituted keys?)"
        ),
    ):
        ClientPolicy().check(a, swapped)
    many = RoundParams(
        **_base(
            participants=tuple(range(12)),
            threshold=7,
            active=True,
            identity_keys=dict.fromkeys(range(12), b"\xff" * 32),
        )
    )
    with pytest.raises(
        PolicyError,
        match=_exact(
            "round 7: identity keys of participants [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] differ from "
            "the keys pinned on this device (the server substituted keys?)"
        ),
    ):
        ClientPolicy().check(many, KEYS)
    with pytest.raises(
        PolicyError,
        match=_exact(
            "round 7: no pinned identity key for participants [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]; "
            "this device cannot check their consistency signatures"
        ),
    ):
        ClientPolicy().check(a, {0: KEYS[0]})


def test_policy_dict_round_trip_and_refusals() -> None:
    p = ClientPolicy(allowed_graphs=("complete",), sigma=50.0, min_cohort=4)
    d = p.to_dict()
    assert d["allowed_graphs"] == ["complete"] and d["sigma"] == 50.0
    assert ClientPolicy.from_dict(d) == p
    with pytest.raises(
        ValueError, match=_exact("ClientPolicy.from_dict needs a mapping, got list")
    ):
        ClientPolicy.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=_exact("unknown ClientPolicy keys: ['a', 'b']")):
        ClientPolicy.from_dict({"b": 1, "a": 2})


# ------------------------------------------------------------------ ProtocolConfig


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"dropout": "0.1"}, "dropout must be a number, got '0.1'"),
        ({"corrupt": True}, "corrupt must be a number, got True"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"corrupt": -0.01}, "corrupt must be in [0, 1), got -0.01"),
        ({"dropout": 0.5, "corrupt": 0.41}, "dropout + corrupt must be <= 0.9, got 0.5 + 0.41"),
        ({"active": 1}, "active must be a bool, got 1"),
        ({"min_survivors": 1.01}, "min_survivors must be a fraction in [0, 1], got 1.01"),
        ({"min_survivors": -0.5}, "min_survivors must be a fraction in [0, 1], got -0.5"),
        ({"min_survivors": True}, "min_survivors must be a fraction in [0, 1], got True"),
        ({"min_survivors": "0.5"}, "min_survivors must be a fraction in [0, 1], got '0.5'"),
    ],
)
def test_protocol_config_refuses_with_the_bad_value(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exact(message)):
        ProtocolConfig(**kw)


def test_protocol_config_ends_are_accepted_and_round_trip() -> None:
    for kw in (
        {"dropout": 0, "corrupt": 0, "min_survivors": 0},
        {"dropout": 0.45, "corrupt": 0.45, "min_survivors": 1},
        {"dropout": 0.9, "corrupt": 0.0, "active": True, "graph": "complete"},
        {"dropout": 0.0, "corrupt": 0.9},
    ):
        c = ProtocolConfig(**kw)  # type: ignore[arg-type]
        assert c.to_dict() == {**ProtocolConfig().to_dict(), **kw}
        assert ProtocolConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=_exact("ProtocolConfig.from_dict needs a dict, got list")):
        ProtocolConfig.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=_exact("unknown ProtocolConfig keys: ['a', 'b']")):
        ProtocolConfig.from_dict({"b": 1, "a": 2})


# ------------------------------------------------------------------ plug-ins


@pytest.fixture
def imports_switch() -> Iterator[None]:
    """Leave the import switch, sys.path and sys.modules as they were."""
    allowed = imports_allowed()
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("wireplug_"):
            del sys.modules[name]
    sys.path[:] = path
    allow_imports(allowed)


def _adopt(obj: Any, name: str) -> tuple[str, Any]:
    if not callable(obj):
        raise TypeError(f"not callable: {obj!r}")
    return (name, obj)


def test_registry_resolves_registered_paths_and_refuses_the_rest(imports_switch: None) -> None:
    reg: PluginRegistry[tuple[str, Any]] = PluginRegistry("widget", "wireplug_none.widgets", _adopt)
    assert (reg.resolver.kind, reg.resolver.group) == ("widget", "wireplug_none.widgets")
    reg["b"] = ("b", len)
    reg["a"] = ("a", abs)
    assert reg.resolve("a") == ("a", abs) and reg.names() == ["b", "a"]
    got = reg.resolve("os.path:join")
    assert got == ("os.path:join", __import__("os").path.join) and reg["os.path:join"] is got
    assert reg.resolve("os:path.join") == ("os:path.join", __import__("os").path.join)
    with pytest.raises(PluginError, match=_exact("widget name must be a string, got 3")):
        reg.resolve(3)
    with pytest.raises(
        PluginError,
        match=_exact(
            "unknown widget 'nope'; known: b, a, os.path:join, os:path.join, or package.module:Attr"
        ),
    ):
        reg.resolve("nope")
    with pytest.raises(PluginError, match=_exact("widget 'os:sep': not callable: '/'")):
        reg.resolve("os:sep")
    allow_imports(False)
    assert reg.resolve("a") == ("a", abs)  # registered names still resolve
    with pytest.raises(
        PluginError,
        match=_exact(
            "unknown widget 'json:dumps': this process does not import plug-ins named by "
            "others; known: b, a, os.path:join, os:path.join"
        ),
    ):
        reg.resolve("json:dumps")
    with pytest.raises(TypeError, match=_exact("allow_imports needs a bool, got 1")):
        allow_imports(1)  # type: ignore[arg-type]


def test_entry_points_of_the_registry_group(tmp_path: Path, imports_switch: None) -> None:
    """An installed distribution's entry point (a dist-info on sys.path) resolves by its
    name, is adopted under that name and stored; an entry point that cannot load says so;
    entry points are read once, until refresh()."""
    sys.path.insert(0, str(tmp_path))
    reg: PluginRegistry[tuple[str, Any]] = PluginRegistry("widget", "wireplug.widgets", _adopt)
    assert reg.names() == []
    (tmp_path / "wireplug_mod.py").write_text("def make():\n    return 42\n", encoding="utf-8")
    dist = tmp_path / "wireplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wireplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[wireplug.widgets]\nmaker = wireplug_mod:make\nbroken = wireplug_mod:nothing\n"
    )
    assert reg.names() == []  # read once
    reg.refresh()
    other: PluginRegistry[tuple[str, Any]] = PluginRegistry("widget", "wireplug.other", _adopt)
    assert other.names() == []
    assert reg.names() == ["broken", "maker"]
    allow_imports(False)  # an installed entry point is not a path named by someone else
    name, make = reg.resolve("maker")
    assert name == "maker" and make() == 42 and reg["maker"] == ("maker", make)
    assert reg.names() == ["maker", "broken"]  # registered first, then the entry points left
    with pytest.raises(
        PluginError,
        match=re.escape(
            "widget 'broken': cannot load entry point 'wireplug_mod:nothing' of wireplug.widgets: "
        ),
    ):
        reg.resolve("broken")


def test_load_attr_and_import_paths() -> None:
    assert load_attr("os.path:join") is __import__("os").path.join
    assert load_attr("os:path.sep") == __import__("os").path.sep
    assert is_import_path("a.b:C.d") and not is_import_path("a:b:c") and not is_import_path(3)
    with pytest.raises(
        PluginError, match=_exact("'os.path' is not an import path of the form package.module:Attr")
    ):
        load_attr("os.path")
    with pytest.raises(
        PluginError, match=_exact("'os' has no attribute 'path.nope' ('os:path.nope')")
    ):
        load_attr("os:path.nope")
