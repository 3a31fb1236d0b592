"""RoundParams / ProtocolConfig validation and serialization."""

from __future__ import annotations

import json

import pytest

from secagg import ProtocolConfig, RoundParams
from secagg.params import complete_threshold

from ._helpers import det_random, make_params


def test_to_dict_round_trip_json() -> None:
    for active in (False, True):
        p, _ = make_params(6, active=active)
        d = json.loads(json.dumps(p.to_dict()))
        q = RoundParams.from_dict(d)
        assert q == p and hash(q) == hash(p)
        assert q.neighbours(2) == p.neighbours(2)


def test_create_complete_and_harary() -> None:
    p = RoundParams.create(1, [5, 3, 9, 1], 10, 20, random_bytes=det_random())
    assert p.participants == (1, 3, 5, 9) and p.graph == "complete" and p.degree is None
    assert p.threshold == complete_threshold(4, 0.1, 0.1) and 2 <= p.threshold <= 4
    assert p.modulus == 1 << 20 and len(p.graph_seed) == 32
    big = RoundParams.create(1, range(1000), 10, 20, graph="harary")
    assert (big.degree, big.threshold) == (48, 27)
    small = RoundParams.create(1, range(4), 10, 20, graph="harary", dropout=0.3, corrupt=0.3)
    assert small.graph == "complete"  # no sparse graph fits: falls back
    cfg = ProtocolConfig(graph="harary", dropout=0.1, corrupt=0.05)
    viacfg = RoundParams.create(1, range(1000), 10, 20, config=cfg)
    assert viacfg.graph == "harary" and viacfg.degree is not None


def test_complete_threshold_rules() -> None:
    assert complete_threshold(100, 0.1, 0.1) == 67
    assert complete_threshold(100, 0.5, 0.1) == 50  # capped so expected survivors finish
    assert complete_threshold(100, 0.5, 0.1, active=True) == 67  # cap 50 < n/2 + 1: no cap
    assert complete_threshold(2, 0.1, 0.1) == 2
    assert complete_threshold(1, 0.1, 0.1) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"round_id": -1},
        {"participants": (2, 1)},
        {"participants": (1, 1)},
        {"participants": ()},
        {"dim": 0},
        {"bits": 7},
        {"bits": 63},
        {"threshold": 0},
        {"threshold": 7},
        {"graph": "ring"},
        {"degree": 2},
        {"graph": "harary", "degree": 3},
        {"graph": "harary", "degree": 2, "threshold": 4},
        {"graph_seed": b"x"},
        {"active": True},
    ],
)
def test_validation_rejects(change: dict) -> None:
    p, _ = make_params(6)
    d = {
        "round_id": p.round_id,
        "participants": p.participants,
        "dim": p.dim,
        "bits": p.bits,
        "threshold": p.threshold,
        "graph": p.graph,
        "degree": p.degree,
        "graph_seed": p.graph_seed,
    }
    d.update(change)
    with pytest.raises(ValueError):
        RoundParams(**d)


def test_from_dict_rejects_malformed() -> None:
    p, _ = make_params(4)
    d = p.to_dict()
    for bad in (
        {k: v for k, v in d.items() if k != "dim"},
        {**d, "extra": 1},
        {**d, "graph_seed": "!!"},
    ):
        with pytest.raises(ValueError):
            RoundParams.from_dict(bad)


def test_protocol_config() -> None:
    c = ProtocolConfig()
    assert ProtocolConfig.from_dict(c.to_dict()) == c
    for bad in (
        {"graph": "x"},
        {"dropout": 1.0},
        {"corrupt": -0.1},
        {"dropout": 0.5, "corrupt": 0.5},
    ):
        with pytest.raises(ValueError):
            ProtocolConfig(**bad)
    with pytest.raises(ValueError):
        ProtocolConfig.from_dict({"nope": 1})
