"""The mutation report's bookkeeping (benchmarks/mutation.py): the review files, merging
an earlier run's verdicts, and the kill rate. The report is what issue 16's figures are
read from, so a wrong merge would print a wrong kill rate."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import mutation


def _meta(root: Path, rel: str, codes: dict[str, int | None], hashes: dict[str, str]) -> None:
    path = root / (rel + ".meta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": hashes,
                                "durations_by_key": {}}))


def test_merge_fills_only_unchecked_mutants_of_unchanged_functions(tmp_path: Path) -> None:
    now, old = tmp_path / "now", tmp_path / "old"
    _meta(now, "pkg/mod.py", {
        "pkg.mod.x_same__mutmut_1": None,       # unchecked, function unchanged: merged
        "pkg.mod.x_same__mutmut_2": 0,          # checked now: the new verdict stays
        "pkg.mod.xǁKǁchanged__mutmut_1": None,  # function changed since: not merged
    }, {"x_same": "aaa", "xǁKǁchanged": "new"})
    _meta(old, "pkg/mod.py", {
        "pkg.mod.x_same__mutmut_1": 1,
        "pkg.mod.x_same__mutmut_2": 1,
        "pkg.mod.xǁKǁchanged__mutmut_1": 1,
    }, {"x_same": "aaa", "xǁKǁchanged": "old"})
    (mod,) = mutation.load(now, merge=old)
    assert mod.statuses == {
        "pkg.mod.x_same__mutmut_1": "killed",
        "pkg.mod.x_same__mutmut_2": "survived",
        "pkg.mod.xǁKǁchanged__mutmut_1": "not checked",
    }


def test_kill_rate_score_and_lower_bound() -> None:
    c = Counter({"killed": 6, "type check": 1, "survived": 1, "timeout": 1, "no tests": 1,
                 "not checked": 50})
    assert mutation.rate(c) == (8, 10, 0.8)  # a timeout (a hang) is detected
    assert mutation.rate(c, timeouts_detected=False) == (7, 10, 0.7)
    assert mutation.rate(c, equivalent=2) == (8, 8, 1.0)  # equivalents leave the denominator
    assert mutation.rate(Counter({"not checked": 3})) == (0, 0, None)


def test_equivalents_are_undetected_mutants_with_an_equivalent_note() -> None:
    m = mutation.Module("pkg/mod.py", {"a": "survived", "b": "survived", "c": "killed",
                                       "d": "no tests"})
    notes = {"a": "equivalent: same value", "b": "accepted: log wording",
             "c": "equivalent: stale note", "d": "equivalent: unreachable"}
    assert mutation.equivalents(m, notes) == 2  # a and d


def test_review_files_merge_and_a_mutant_reviewed_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({
        "notes": {"m.x_f__mutmut_1": "equivalent: why"},
        "killed_by_new": {"m.x_g__mutmut_2": "t"},
    }))
    (tmp_path / "b.json").write_text(json.dumps({"notes": {"m.x_f__mutmut_3": "accepted: why"}}))
    notes, killed = mutation.load_review(tmp_path)
    assert notes == {"m.x_f__mutmut_1": "equivalent: why", "m.x_f__mutmut_3": "accepted: why"}
    assert killed == {"m.x_g__mutmut_2": "t"}
    (tmp_path / "c.json").write_text(json.dumps({"notes": {"m.x_f__mutmut_1": "other"}}))
    with pytest.raises(ValueError, match="m.x_f__mutmut_1"):
        mutation.load_review(tmp_path)


def test_committed_review_files_are_one_line_notes_of_known_kinds() -> None:
    notes, killed = mutation.load_review()
    assert notes and killed
    for name, note in notes.items():
        assert "__mutmut_" in name and "\n" not in note
        assert note.startswith(("equivalent", "accepted")), (name, note)


def test_a_timeout_of_a_reviewed_mutant_counts_as_a_survivor() -> None:
    m = mutation.Module("pkg/mod.py", {"a": "timeout", "b": "timeout", "c": "killed"})
    assert mutation.reconcile([m], {"a": "equivalent: same codec"}) == 1
    assert m.statuses == {"a": "survived", "b": "timeout", "c": "killed"}


def test_the_committed_report_reviews_every_survivor_it_lists() -> None:
    """Issue 16: every surviving mutant in benchmarks/results/mutation.md is killed by a
    later test or carries its one-line review from the review files, and each review it
    prints is the one on file (none is stale or made up)."""
    report = Path(mutation.__file__).resolve().parent / "results" / "mutation.md"
    notes, killed = mutation.load_review()
    listed = 0
    for line in report.read_text(encoding="utf-8").splitlines():
        if not line.startswith("- `") or " — " not in line:
            continue
        name = line[3:line.index("`", 3)]
        if "(survived)" not in line and "(no tests)" not in line:
            continue
        listed += 1
        note = line.rsplit(" — ", 1)[1]
        assert note != "UNREVIEWED", name
        assert note == notes.get(name) or name in killed, (name, note)
    assert listed > 0
