"""The neighbour-graph registry (secagg.graph.GRAPH_REGISTRY) and its plug-in paths.

Checks that the built-ins behind the NeighbourGraph interface choose exactly what the
finder and the complete-graph rule choose, that a graph written from scratch against the
interface runs a correct secure round, and that plug-in imports obey their switch (a
device must not import a module because a server named it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from secagg import ClientPolicy, PolicyError, ProtocolConfig, RoundParams, run_round
from secagg.graph import (
    GRAPH_REGISTRY,
    CompleteGraph,
    HararyGraph,
    NeighbourGraph,
    find_harary_params,
    get_graph,
    harary_neighbours,
    register_graph,
)
from secagg.params import complete_threshold
from secagg.plugins import PluginError, allow_imports, imports_allowed
from secagg.stage import Stage


class FixedRing(NeighbourGraph):
    """A from-scratch family: the participants in id order on a ring, each linked to the
    two nearest on either side (degree 4), threshold 3. Deterministic and public, so a
    corrupt fraction is bounded only by the worst case."""

    name = "fixed_ring_test"

    def choose(
        self, n: int, dropout: float, corrupt: float, *, active: bool
    ) -> tuple[int | None, int] | None:
        return (4, 3) if n >= 6 else None

    def check_degree(self, n: int, degree: int | None) -> None:
        if degree != 4:
            raise ValueError(f"fixed ring degree must be 4, got {degree!r}")

    def share_holders(self, n: int, degree: int | None) -> int:
        return 5

    def corrupt_holder_bound(
        self, n: int, degree: int | None, corrupt: float, sigma: float = 40
    ) -> int:
        return min(4, int(corrupt * n + 1e-9))

    def neighbourhoods(
        self, participants: Sequence[int], degree: int | None, graph_seed: bytes, round_id: int
    ) -> Mapping[int, tuple[int, ...]]:
        n = len(participants)
        return {
            p: tuple(sorted(participants[(i + o) % n] for o in (-2, -1, 1, 2)))
            for i, p in enumerate(participants)
        }


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Leave the registry, the import switch, sys.path and sys.modules as they were (a
    plug-in module a test imported is forgotten, so a second run of the test in the same
    process, as mutmut's does, imports it again)."""
    before = dict(GRAPH_REGISTRY)
    path = list(sys.path)
    modules = set(sys.modules)
    allowed = imports_allowed()
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("graphplug_"):
            del sys.modules[name]
    GRAPH_REGISTRY.clear()
    GRAPH_REGISTRY.update(before)
    GRAPH_REGISTRY.refresh()
    sys.path[:] = path
    allow_imports(allowed)


def test_builtins_are_registered() -> None:
    assert GRAPH_REGISTRY.names()[:2] == ["complete", "harary"]
    assert isinstance(get_graph("complete"), CompleteGraph)
    assert isinstance(get_graph("harary"), HararyGraph)
    with pytest.raises(ValueError, match="unknown graph 'ring'; known: complete, harary"):
        get_graph("ring")
    with pytest.raises(ValueError, match="unknown graph"):
        ProtocolConfig(graph="ring")


@pytest.mark.parametrize("n", [2, 3, 5, 8, 20, 100, 1000])
@pytest.mark.parametrize("dropout,corrupt", [(0.1, 0.1), (0.3, 0.1), (0.05, 0.0), (0.5, 0.3)])
@pytest.mark.parametrize("active", [False, True])
def test_create_chooses_what_the_finder_chooses(
    n: int, dropout: float, corrupt: float, active: bool
) -> None:
    """RoundParams.create through the registry = the rule written out by hand (finder for
    Harary, complete graph when no degree <= n - 2 works, complete_threshold there)."""
    try:
        k, t = find_harary_params(n, dropout, corrupt, active=active) if n >= 3 else (0, 0)
    except ValueError:
        k, t = 0, 0
    want: tuple[str, int | None, int]
    if 2 <= k <= n - 2:
        want = ("harary", k, t)
    else:
        want = ("complete", None, complete_threshold(n, dropout, corrupt, active))
    keys = {i: bytes(32) for i in range(n)} if active else None
    try:
        p = RoundParams.create(0, range(n), 4, 16, graph="harary", dropout=dropout,
                               corrupt=corrupt, active=active, identity_keys=keys)
    except ValueError as exc:  # the threat-model check refuses some tiny cohorts
        assert "no safe parameters" in str(exc)
        return
    assert (p.graph, p.degree, p.threshold) == want


def test_neighbourhoods_match_the_legacy_functions() -> None:
    parts = list(range(0, 60, 3))
    seed = bytes(range(32))
    assert dict(get_graph("harary").neighbourhoods(parts, 6, seed, 7)) == harary_neighbours(
        parts, 6, seed, 7
    )
    complete = get_graph("complete").neighbourhoods(parts, None, seed, 7)
    assert list(complete) == parts and len(complete) == len(parts)
    for c in parts:
        assert complete[c] == tuple(p for p in parts if p != c)
    with pytest.raises(KeyError):
        complete[1]


def test_a_graph_written_against_the_interface_runs_a_correct_round(
    clean_registry: None,
) -> None:
    register_graph(FixedRing)
    with pytest.raises(ValueError, match="already registered"):
        register_graph(FixedRing)
    p = RoundParams.create(3, range(10), 8, 16, graph="fixed_ring_test", dropout=0.1,
                           corrupt=0.0)
    assert (p.graph, p.degree, p.threshold, p.share_holders) == ("fixed_ring_test", 4, 3, 5)
    assert p.neighbours(0) == (1, 2, 8, 9)
    for c in p.participants:  # symmetric
        assert all(c in p.neighbours(v) for v in p.neighbours(c))
    rng = np.random.default_rng(0)  # test inputs, not secrets
    inputs = {c: rng.integers(0, 2**16, 8, dtype=np.uint64) for c in p.participants}
    res = run_round(p, inputs, {4: Stage.MASKED_INPUT, 7: Stage.CONSISTENCY_CHECK})
    want = sum(inputs[c] for c in p.participants if c != 4) % np.uint64(2**16)
    assert np.array_equal(res.sum, want)
    assert RoundParams.from_dict(p.to_dict()) == p
    # too few participants for the ring: the complete graph's limit
    small = RoundParams.create(0, range(5), 8, 16, graph="fixed_ring_test", corrupt=0.0)
    assert small.graph == "complete"
    # a cohort whose corrupt clients could hold t shares is refused
    with pytest.raises(ValueError, match="no safe parameters"):
        RoundParams.create(0, range(40), 8, 16, graph="fixed_ring_test", corrupt=0.1)


def test_policy_accepts_registered_graphs_unless_it_lists_its_own(clean_registry: None) -> None:
    register_graph(FixedRing())
    p = RoundParams.create(0, range(10), 8, 16, graph="fixed_ring_test", corrupt=0.0)
    ClientPolicy(min_threshold_fraction=0.5).check(p)
    with pytest.raises(PolicyError, match="not allowed"):
        ClientPolicy(allowed_graphs=("complete", "harary")).check(p)
    assert ClientPolicy.from_dict(ClientPolicy().to_dict()) == ClientPolicy()


def _write_plugin(root: Path, module: str, marker: Path) -> None:
    """A module that records being imported (in ``marker``) and defines ``Ring``."""
    (root / f"{module}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from secagg.graph import CompleteGraph\n"
        "class Ring(CompleteGraph):\n"
        "    name = 'plugin_ring'\n",
        encoding="utf-8",
    )


def test_import_path_registers_under_the_path(tmp_path: Path, clean_registry: None) -> None:
    marker = tmp_path / "imported.txt"
    _write_plugin(tmp_path, "graphplug_a", marker)
    sys.path.insert(0, str(tmp_path))
    cfg = ProtocolConfig(graph="graphplug_a:Ring")
    assert marker.exists()
    assert "graphplug_a:Ring" in GRAPH_REGISTRY
    p = RoundParams.create(0, range(12), 4, 16, config=cfg)
    assert p.graph == "graphplug_a:Ring"
    with pytest.raises(PluginError, match="no attribute 'Nope'"):
        get_graph("graphplug_a:Nope")
    with pytest.raises(PluginError, match="cannot import"):
        get_graph("graphplug_missing_zz:Ring")
    with pytest.raises(PluginError, match="NeighbourGraph"):
        get_graph("os:getcwd")


def test_round_params_from_a_server_import_nothing_when_imports_are_off(
    tmp_path: Path, clean_registry: None
) -> None:
    """A device (imports off) parsing round parameters that name a module path must
    refuse them without importing the module: the server chooses that string."""
    marker = tmp_path / "imported.txt"
    _write_plugin(tmp_path, "graphplug_b", marker)
    sys.path.insert(0, str(tmp_path))
    honest = RoundParams.create(0, range(8), 4, 16, graph="complete").to_dict()
    hostile = dict(honest, graph="graphplug_b:Ring")
    allow_imports(False)
    with pytest.raises(ValueError, match="does not import plug-ins"):
        RoundParams.from_dict(hostile)
    with pytest.raises(ValueError):
        ClientPolicy(allowed_graphs=("graphplug_b:Ring",))
    assert not marker.exists() and "graphplug_b" not in sys.modules
    allow_imports(True)
    assert RoundParams.from_dict(hostile).graph == "graphplug_b:Ring"
    assert marker.exists()


def test_entry_point_is_listed_without_import_and_loaded_on_use(
    tmp_path: Path, clean_registry: None
) -> None:
    marker = tmp_path / "imported.txt"
    _write_plugin(tmp_path, "graphplug_c", marker)
    dist = tmp_path / "graphplug_c-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: graphplug-c\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[secagg_dp.graphs]\nep_ring = graphplug_c:Ring\n")
    sys.path.insert(0, str(tmp_path))
    GRAPH_REGISTRY.refresh()
    assert "ep_ring" in GRAPH_REGISTRY.names()
    assert not marker.exists()  # listing does not import
    assert "ep_ring" not in GRAPH_REGISTRY
    p = RoundParams.create(0, range(9), 4, 16, graph="ep_ring")
    assert p.graph == "ep_ring" and marker.exists()
    assert type(get_graph("ep_ring")).__name__ == "Ring"
    assert os.fspath(tmp_path) in sys.path
