"""ClientPolicy: validated at construction; every rule refuses with a PolicyError that
names the value and the rule; the defaults accept what RoundParams.create produces."""

from __future__ import annotations

import dataclasses

import pytest

from secagg import ClientPolicy, ClientProtocol, PolicyError, ProtocolConfig, RoundParams

from ._helpers import make_params


def _params(**change: object) -> RoundParams:
    p, _ = make_params(10, threshold=7)
    return dataclasses.replace(p, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"min_threshold_fraction": 1.5},
        {"min_threshold_fraction": "0.5"},
        {"corrupt": 1.0},
        {"corrupt": -0.1},
        {"sigma": 0},
        {"min_cohort": 1},
        {"min_cohort": 10, "max_cohort": 5},
        {"min_cohort": 3.0},
        {"allowed_graphs": ()},
        {"allowed_graphs": ("ring",)},
        {"allowed_graphs": "harary"},
        {"min_bits": 7},
        {"max_bits": 63},
        {"min_bits": 20, "max_bits": 16},
        {"min_survivors_fraction": 2.0},
        {"require_active": 1},
        {"require_pinned_keys": "yes"},
    ],
)
def test_validated_at_construction(bad: dict) -> None:
    with pytest.raises(ValueError, match="ClientPolicy"):
        ClientPolicy(**bad)


def test_round_trip() -> None:
    p = ClientPolicy(allowed_graphs=["harary"], require_active=True, min_bits=12)
    assert p.allowed_graphs == ("harary",)
    assert ClientPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        ClientPolicy.from_dict({"nope": 1})


@pytest.mark.parametrize(
    ("policy", "params", "match"),
    [
        (ClientPolicy(allowed_graphs=("harary",)), {}, "graph 'complete' is not allowed"),
        (ClientPolicy(min_cohort=11), {}, "10 participants, this device accepts"),
        (ClientPolicy(max_cohort=9), {}, "10 participants"),
        (ClientPolicy(min_bits=24), {}, "bits=20"),
        (ClientPolicy(max_bits=16), {}, "bits=20"),
        (ClientPolicy(require_active=True), {}, "not in active mode"),
        (ClientPolicy(min_threshold_fraction=0.8), {}, "threshold 7 is below .* minimum 8"),
        (ClientPolicy(min_threshold_fraction=0), {"threshold": 1, "min_survivors": 1}, "1 < 2"),
        (ClientPolicy(corrupt=0.7), {}, "threshold 7 <= 7"),
        (ClientPolicy(min_survivors_fraction=0.9), {}, "min_survivors 7 is below .* minimum 9"),
    ],
)
def test_each_rule_refuses_with_a_reason(policy: ClientPolicy, params: dict, match: str) -> None:
    p = _params(**params)
    with pytest.raises(PolicyError, match=match):
        policy.check(p)
    with pytest.raises(PolicyError, match=match):
        ClientProtocol(p, 0, policy=policy)


def test_policy_error_is_a_refusal() -> None:
    from secagg import ProtocolError, RefusedError

    assert issubclass(PolicyError, RefusedError) and issubclass(PolicyError, ProtocolError)


@pytest.mark.parametrize("n", [3, 5, 10, 20, 100, 300])
@pytest.mark.parametrize("graph", ["complete", "harary"])
@pytest.mark.parametrize(("dropout", "active"), [(0.1, False), (0.3, False), (0.1, True)])
def test_defaults_accept_created_rounds(n: int, graph: str, dropout: float, active: bool) -> None:
    identity = {c: bytes([1]) * 32 for c in range(n)} if active else None
    cfg = ProtocolConfig(graph=graph, dropout=dropout, corrupt=0.1, active=active)
    p = RoundParams.create(0, range(n), 4, 16, config=cfg, identity_keys=identity)
    ClientPolicy().check(p)
