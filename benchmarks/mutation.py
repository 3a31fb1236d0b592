"""``python -m benchmarks mutation``: mutation testing of secagg/, dp/ and server/round.py.

``make mutate`` runs mutmut 3 (configuration: ``[tool.mutmut]`` in pyproject.toml; the
mutated copy of the tree lives in ``mutants/``, gitignored) and then this module, which
reads mutmut's per-file results (``mutants/**/*.py.meta``) and writes
``benchmarks/results/mutation.md``:

- per module and per package (secagg/, dp/, the server's round logic): mutants
  generated, checked, killed, surviving, and the kill rate over the *checked* ones only
  (a module not run in any recorded run is listed as such, with no rate);
- every surviving mutant (and every one no selected test reaches) with its one-line
  diff and its review note from ``benchmarks/mutation_review/*.json`` (an equivalent
  mutant, or why it is accepted); unreviewed survivors are marked as such;
- the mutants killed by the tests added for issue 16 (``killed_by_new`` in those files);
- the wall time of each recorded run (``--run`` times it and appends it to
  ``benchmarks/results/mutation_runs.json``) and the time per mutant, from which a
  full run is planned.

Kill rate = killed / checked, where checked = killed + survived + timeout + no tests +
suspicious: a timeout counts as not detected (a lower bound on the kill rate) and is
listed with the survivors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

from benchmarks.cli import fail_usage, positive_int

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
RESULTS = ROOT / "benchmarks" / "results"
REPORT = RESULTS / "mutation.md"
RUNS = RESULTS / "mutation_runs.json"

#: The packages of the issue's targets: (label, module prefix, target kill rate).
PACKAGES: tuple[tuple[str, str, float], ...] = (
    ("secagg/", "secagg/", 0.90),
    ("dp/", "dp/", 0.90),
    ("server round logic (server/round.py)", "server/round.py", 0.80),
)

#: mutmut exit codes -> status (mutmut.stats.status_by_exit_code).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 35: "suspicious", 36: "timeout", 37: "type check", -24: "timeout",
          24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          2: "interrupted", None: "not checked"}
#: A timeout is a mutant whose tests ran past ``timeout_multiplier`` x (their measured
#: time + 1 s), in wall-clock and in CPU time (mutmut stops them): an endless loop, e.g.
#: a search that never ends. ``make test`` would not pass with it (pytest-timeout fails a
#: hung test), so it counts as detected, as in Stryker and PIT; the report also gives the
#: rate with timeouts counted as survivors. The wall-clock bound makes timeouts spurious
#: on a loaded machine, so they are re-run on a quiet one before a figure is read. (The
#: timeouts of the first recorded run were HTTP server tests hanging in mutmut's forked
#: workers; those tests are no longer selected.)
DETECTED = {"killed", "type check", "segfault", "timeout"}
UNDETECTED = {"survived", "no tests", "suspicious"}

#: The review of surviving mutants, one JSON file per module or area
#: (``{"notes": {mutant: "equivalent: why" | "accepted: why"}, "killed_by_new":
#: {mutant: "the test added that kills it"}}``), kept as data so several reviewers can
#: add to it at once. Every note is one line.
REVIEW = Path(__file__).resolve().parent / "mutation_review"


def load_review(directory: Path = REVIEW) -> tuple[dict[str, str], dict[str, str]]:
    """(notes, killed_by_new) merged over every review file; a mutant reviewed in two
    files is an error (the two notes could disagree)."""
    notes: dict[str, str] = {}
    killed: dict[str, str] = {}
    for f in sorted(directory.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        for part, into in (("notes", notes), ("killed_by_new", killed)):
            for k, v in data.get(part, {}).items():
                if k in into:
                    raise ValueError(f"{f.name}: mutant {k} is reviewed twice")
                into[k] = str(v)
    return notes, killed


#: The issue's six gaps (and two property tests): the test that closes each, the bug put
#: back by hand in a scratch copy of the tree, and what failed (checked 2026-12-01; the
#: old tests passed on every one of these bugs except where noted).
GAPS: tuple[tuple[str, str, str], ...] = (
    ("Known answers for derived labels, keys, nonces and AD (round id and both parties)",
     "share AD without the round id; share key made symmetric (min/max of the pair); "
     "pairwise-mask PRG label without the round id",
     "tests/secagg/test_mutation_gaps.py: test_derived_labels_keys_and_ad_known_answers, "
     "test_every_derivation_binds_round_and_parties[ad|key|pair], "
     "test_client_encrypts_shares_under_the_pinned_key_nonce_and_ad, "
     "test_client_masks_with_the_pinned_prg_labels fail; old tests: 408 passed"),
    ("Shamir shares differ under two randomness sources; one share reveals nothing",
     "split() drawing its coefficients from random.Random(0)",
     "test_shares_of_one_secret_differ_under_two_randomness_sources, "
     "test_client_shares_use_its_randomness_for_the_coefficients, "
     "test_one_share_is_consistent_with_every_secret, ... (8 failed); old tests: all passed"),
    ("Clipping at C < 1 and at norms close to C",
     "clip decided on the squared norm (norms * norms > C)",
     "tests/dp/test_mutation_gaps.py: 5 of test_clipping_* fail; old dp tests: 235 passed"),
    ("Discrete-mechanism ε at several δ against the reference formulas",
     "δ = 1e-5 hard-coded in the accountant's RDP -> ε conversion",
     "test_discrete_epsilon_at_several_deltas_matches_the_reference[ddgauss|skellam], "
     "test_accountant_..._sensitive_to_delta fail; old dp tests: 235 passed"),
    ("Leak check widened to hex, repr and escaped encodings of every vector",
     "driver logs `masked input from %d: %r` with the first 64 bytes of the body",
     "tests/server/test_mutation_gaps.py: test_no_vector_reaches_the_log_or_store_in_any_"
     "encoding fails (repr); test_rounds.py's leak check passed"),
    ("ε of a dropout round equals an accountant composed by hand with the survivors",
     "release() charging privacy_event(len(participants)) instead of the survivors",
     "test_dropout_round_epsilon_equals_an_accountant_of_the_survivors (HTTP) and "
     "test_mutation_gaps_core.py::test_a_round_with_a_dropout_is_charged_for_its_survivors "
     "fail; test_rounds.py and test_budget.py passed"),
    ("A budget between the two candidate values",
     "begin_round() checking the budget with privacy_event(len(sampled)) instead of "
     "min_survivors",
     "test_budget_between_the_two_candidate_values (HTTP: a second round runs) and "
     "test_mutation_gaps_core.py::test_budget_between_the_two_candidates_stops_before_the_"
     "round fail; test_budget.py passed"),
    ("Property: decoder's signed representative at ±2^(b-1); packing at the wrap",
     "decoder `signed > 2^(b-1)` instead of `>=`; pack() accepting 2^b (`>` for `>=`)",
     "test_decoder_signed_representative_at_the_wrap fails (old dp tests passed); "
     "test_pack_round_trips_at_the_wrap_boundaries fails (one old packing test did too)"),
    ("Property: never both shares across any sequence of unmask requests",
     "either half of the guard removed (want_b & revealed_sk, or want_sk & revealed_b)",
     "test_never_both_shares_across_any_request_sequence fails for both halves; the old "
     "test_client_refuses_both_shares_across_requests catches only one of them"),
)


@dataclass
class Module:
    path: str
    statuses: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    #: mutmut's hash of each function's source, by mangled function name
    hashes: dict[str, str] = field(default_factory=dict)

    def count(self) -> Counter[str]:
        return Counter(self.statuses.values())


def load(mutants_dir: Path = MUTANTS, merge: Path | None = None) -> list[Module]:
    """Every mutated source file's results, from mutmut's ``.meta`` JSON files. ``merge``:
    a copy of an earlier ``mutants/`` (a config change makes mutmut reset every result)
    whose verdicts fill in the mutants not checked since, for functions whose source is
    unchanged (same hash): a mutant's number means another change once its function
    changes."""
    if merge is not None:
        old = {m.path: m for m in load(merge)}
        mods = load(mutants_dir)
        for m in mods:
            prev = old.get(m.path)
            if prev is None:
                continue
            for k, st in m.statuses.items():
                fn = k.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
                same = fn in m.hashes and prev.hashes.get(fn) == m.hashes[fn]
                if (same and st == "not checked"
                        and prev.statuses.get(k, "not checked") != "not checked"):
                    m.statuses[k] = prev.statuses[k]
                    if k in prev.durations:
                        m.durations[k] = prev.durations[k]
        return mods
    out = []
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        rel = meta.relative_to(mutants_dir).as_posix()[: -len(".meta")]
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if not codes:
            continue
        out.append(Module(
            rel,
            {k: STATUS.get(v, "suspicious") for k, v in codes.items()},
            {k: float(v) for k, v in data.get("durations_by_key", {}).items()},
            dict(data.get("hash_by_function_name", {})),
        ))
    return out


def rate(c: Counter[str], equivalent: int = 0,
         timeouts_detected: bool = True) -> tuple[int, int, float | None]:
    """(detected, checked, detected / checked). ``equivalent``: undetected mutants
    reviewed as equivalent, left out of ``checked`` (the mutation score; no test can
    detect them). ``timeouts_detected=False`` gives the lower bound."""
    detected = sum(c[s] for s in DETECTED)
    if not timeouts_detected:
        detected -= c["timeout"]
    checked = sum(c[s] for s in DETECTED | UNDETECTED) - equivalent
    return detected, checked, (detected / checked if checked > 0 else None)


def equivalents(m: Module, notes: dict[str, str]) -> int:
    """Undetected mutants of ``m`` whose review note says they are equivalent."""
    return sum(1 for k, s in m.statuses.items()
               if s in UNDETECTED and notes.get(k, "").startswith("equivalent"))


def one_line_diff(name: str, path: str) -> str:
    """The mutant as ``old -> new`` (changed lines only), via mutmut's own diff."""
    try:
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            from mutmut.mutation.diff_apply import get_diff_for_mutant

            diff = get_diff_for_mutant(name, path=Path(path))
        finally:
            os.chdir(cwd)
    except Exception as err:  # the report must still be written
        return f"(diff unavailable: {type(err).__name__})"
    rows = diff.splitlines()
    old = [ln[1:].strip() for ln in rows if ln.startswith("-") and not ln.startswith("---")]
    new = [ln[1:].strip() for ln in rows if ln.startswith("+") and not ln.startswith("+++")]
    text = f"{' / '.join(old)} → {' / '.join(new)}"
    return text if len(text) <= 160 else text[:157] + "..."


def _fmt_rate(r: float | None) -> str:
    return "—" if r is None else f"{100 * r:.1f} %"


def reconcile(modules: list[Module], notes: dict[str, str]) -> int:
    """A timeout of a mutant reviewed as equivalent or accepted cannot be an endless loop
    the tests found: it timed out on a loaded machine. Count it as a survivor (with its
    note) instead of as detected. Returns how many were changed."""
    changed = 0
    for m in modules:
        for k, st in m.statuses.items():
            if st == "timeout" and k in notes:
                m.statuses[k] = "survived"
                changed += 1
    return changed


def render(modules: list[Module], runs: list[dict], diffs: bool = True) -> str:
    NOTES, KILLED_BY_NEW = load_review()  # noqa: N806 (read-only tables)
    spurious = reconcile(modules, NOTES)
    lines = ["# Mutation testing: secagg/, dp/, server/round.py", ""]
    lines += [
        "Written by `python -m benchmarks mutation` (`make mutate`) from mutmut 3.8.1's",
        "results in `mutants/` (config: `[tool.mutmut]` in pyproject.toml). Each mutant runs",
        "only the selected tests that call the mutated function. Kill rate = detected /",
        "checked, where a timeout (an endless loop the tests ran into) is detected; the",
        "score leaves out the survivors reviewed as equivalent; the lower bound counts",
        "timeouts as survivors. Modules or mutants not checked in any recorded run have",
        "no rate. A timeout of a mutant reviewed as equivalent or accepted is counted as",
        "a survivor (it timed out on a loaded machine, it cannot be a loop the tests",
        f"found; {spurious} here).",
        "",
    ]
    lines += [
        "## Scope", "",
        "- Mutated: `secagg/*`, `dp/*` except `dp/__main__.py` (the CLI, tested through "
        "subprocesses) and `dp/audit.py` (the canary audit, statistical and slow), and "
        "`server/round.py`.",
        "- Tests run per mutant: `tests/secagg`, `tests/dp` (without `test_cli.py` and "
        "`test_audit.py`) and `tests/server/test_mutation_gaps_core.py` (the round logic "
        "in-process). No HTTP server test: under mutmut's forked workers their stage "
        "deadlines never fire and every such test hangs until the timeout (seen in the "
        "first run below; its timeouts were re-run without them).",
        "- A module with no rate was not mutated in any recorded run: its kill rate is "
        "unknown, not claimed.", "",
    ]
    # ---- the gaps
    lines += ["## The six gaps of issue 16 (bug put back by hand)", "",
              "| gap | bug put back | result |", "|---|---|---|"]
    lines += [f"| {g} | {b} | {r} |" for g, b, r in GAPS]
    lines.append("")
    # ---- runs
    lines += ["## Runs on this machine", ""]
    if runs:
        lines += ["| started (UTC) | mutants selected | checked in run | wall time "
                  "| wall s / mutant | jobs | note |", "|---|---|---|---|---|---|---|"]
        for r in runs:
            per = r["seconds"] / r["checked"] if r.get("checked") else None
            lines.append(
                f"| {r['started']} | {' '.join(r['patterns']) or 'all'} | "
                f"{r.get('checked', '?')} | "
                f"{r['seconds'] / 60:.1f} min | {'—' if per is None else f'{per:.2f}'} | "
                f"{r.get('jobs', '?')} | {r.get('note', '')} |"
            )
    else:
        lines.append("No run recorded (`python -m benchmarks mutation --run` records one).")
    lines.append("")
    # ---- per module
    lines += ["## Per module", "",
              "Kill rate = detected / checked (a timeout is detected). Score = the same with "
              "the survivors reviewed as equivalent left out (no test can detect them). Lower "
              "bound = the kill rate with timeouts counted as survivors.", "",
              "| module | mutants | checked | killed | timeout | survived | no tests "
              "| equivalent | kill rate | score | lower bound |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in modules:
        c = m.count()
        eq = equivalents(m, NOTES)
        det, checked, r = rate(c)
        if not checked:
            lines.append(f"| {m.path} | {len(m.statuses)} | 0 | | | | | | not run | | |")
            continue
        lines.append(
            f"| {m.path} | {len(m.statuses)} | {checked} | {c['killed']} | {c['timeout']} | "
            f"{c['survived']} | {c['no tests']} | {eq} | {_fmt_rate(r)} | "
            f"{_fmt_rate(rate(c, eq)[2])} | {_fmt_rate(rate(c, timeouts_detected=False)[2])} |"
        )
    lines.append("")
    # ---- per package
    lines += ["## Per package (over the mutants checked)", "",
              "| package | modules run | modules not run | mutants checked / generated "
              "| kill rate | score (target) | lower bound |",
              "|---|---|---|---|---|---|---|"]
    for label, prefix, target in PACKAGES:
        mods = [m for m in modules if m.path.startswith(prefix)]
        total: Counter[str] = Counter()
        for m in mods:
            total += m.count()
        eq = sum(equivalents(m, NOTES) for m in mods)
        det, checked, r = rate(total)
        score = rate(total, eq)[2]
        ran = [m.path for m in mods if rate(m.count())[1]]
        not_run = [m.path for m in mods if not rate(m.count())[1]]
        gen = sum(len(m.statuses) for m in mods)
        ok = "" if score is None else (" met" if score >= target else " NOT met")
        lines.append(
            f"| {label} | {len(ran)} | {len(not_run)} | {checked} / {gen} | {_fmt_rate(r)} | "
            f"{_fmt_rate(score)} ({100 * target:.0f} %{ok}) | "
            f"{_fmt_rate(rate(total, timeouts_detected=False)[2])} |"
        )
    lines.append("")
    # ---- time per mutant
    durs = [d for m in modules for d in m.durations.values()]
    remaining = sum(m.count()["not checked"] for m in modules)
    total = sum(len(m.statuses) for m in modules)
    if durs:
        mean = sum(durs) / len(durs)
        lines += [
            "## Planning a full run", "",
            f"Mean test time per checked mutant (one worker): {mean:.2f} s over {len(durs)} "
            f"mutants. Not yet checked: {remaining} mutants, about "
            f"{remaining * mean / 3600:.1f} CPU-hours (÷ the jobs of `MUTATE_JOBS`, plus "
            "start-up; slower on a loaded machine).",
        ]
        wall = sum(r["seconds"] for r in runs)
        done = sum(r.get("checked", 0) for r in runs)
        if done:
            lines += [
                "", f"Measured wall time, start-up included: {wall / 60:.0f} min for {done} "
                f"mutants ({wall / done:.2f} s each with the runs' jobs), i.e. about "
                + (f"{remaining * wall / done / 3600:.1f} h for the rest; more for dp/noise, "
                   "dp/prng and dp/encoding, which every dp test calls (their mutants run the "
                   "most tests, and a broken sampler loops until the timeout)."
                   if remaining else
                   f"{total * wall / done / 3600:.1f} h for a run of all {total} from "
                   "scratch at that mean (the notes of the runs above say when the machine "
                   "was loaded; quiet stretches went 3-4 times faster). A run after new "
                   "tests needs only the survivors their functions reach (`make mutate "
                   "MUTANTS=...`)."),
            ]
        lines.append("")
    # ---- survivors
    lines += ["## Surviving mutants (and mutants no selected test reaches)", ""]
    n_surv = 0
    for m in modules:
        names = [k for k, s in sorted(m.statuses.items()) if s in UNDETECTED]
        if not names:
            continue
        lines += [f"### {m.path}", ""]
        for k in names:
            n_surv += 1
            diff = one_line_diff(k, m.path) if diffs else ""
            fallback = "UNREVIEWED"
            if k in KILLED_BY_NEW:
                fallback = f"killed by a test added after this verdict: {KILLED_BY_NEW[k]}"
            note = NOTES.get(k) or fallback
            lines.append(f"- `{k}` ({m.statuses[k]}): `{diff}` — {note}")
        lines.append("")
    if not n_surv:
        lines += ["None among the checked mutants.", ""]
    # ---- timeouts
    hung = [k for m in modules for k, st in sorted(m.statuses.items()) if st == "timeout"]
    if hung:
        lines += ["## Timeouts (counted as detected: the mutant made a test loop or run past "
                  "4x its CPU time)", "", ", ".join(f"`{k}`" for k in hung), ""]
    # ---- killed by the new tests
    if KILLED_BY_NEW:
        lines += ["## Survivors of the first run killed by tests added for issue 16", ""]
        status = {k: s for m in modules for k, s in m.statuses.items()}
        for k, test in sorted(KILLED_BY_NEW.items()):
            lines.append(f"- `{k}` ({status.get(k, 'unknown')} now): {test}")
        lines.append("")
    return "\n".join(lines)


def read_runs() -> list[dict]:
    if RUNS.exists():
        return list(json.loads(RUNS.read_text()))
    return []


def run_mutmut(patterns: list[str], jobs: int) -> int:
    """Run mutmut on ``patterns`` (all mutants if none), timed; append the run to RUNS."""
    before = {k: s for m in load() for k, s in m.statuses.items()} if MUTANTS.exists() else {}
    started = datetime.now(UTC)
    t0 = time.monotonic()
    cmd = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(jobs),
           *patterns]
    rc = subprocess.call(cmd, cwd=ROOT)
    seconds = time.monotonic() - t0
    after = {k: s for m in load() for k, s in m.statuses.items()}
    if patterns:  # mutmut re-runs every mutant a pattern names
        checked = sum(1 for k, s in after.items()
                      if s != "not checked" and any(fnmatch(k, p) for p in patterns))
    else:  # and only the unchecked ones otherwise
        checked = sum(1 for k, s in after.items()
                      if s != "not checked" and before.get(k, "not checked") == "not checked")
    runs = read_runs()
    runs.append({"started": started.strftime("%Y-%m-%d %H:%M"), "patterns": patterns,
                 "seconds": round(seconds, 1), "checked": checked, "jobs": jobs,
                 "note": f"mutmut exit {rc}"})
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    return rc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*",
                        help="mutant name globs for --run, e.g. 'secagg.shamir*' (default all)")
    parser.add_argument("--run", action="store_true", help="run mutmut first (timed)")
    parser.add_argument("--jobs", type=positive_int, default=2, help="mutmut workers")
    parser.add_argument("--out", type=Path, default=REPORT, help="report path")
    parser.add_argument("--no-diffs", action="store_true", help="skip the one-line diffs")
    parser.add_argument("--merge", type=Path, default=None,
                        help="an earlier copy of mutants/ whose verdicts fill the unchecked")


def main(args: argparse.Namespace) -> int:
    if args.patterns and not args.run:
        fail_usage("mutant patterns need --run")
    if args.run:
        run_mutmut(list(args.patterns), args.jobs)
    if not MUTANTS.exists():
        fail_usage(f"no mutmut results in {MUTANTS}: run `make mutate` first")
    modules = load(MUTANTS, args.merge)
    text = render(modules, read_runs(), diffs=not args.no_diffs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}")
    return 0
