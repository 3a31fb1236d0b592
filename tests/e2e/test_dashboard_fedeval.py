"""The dashboard's federated-evaluation panel in a real headless browser (issue 14, display).

A round record may carry ``federated_eval``: the DP-noised, securely summed evaluation of
the model released by the previous round (``model_version``) on the devices' held-out data.
The page must draw the noised histogram as it is (bars clipped at 0, raw counts in the
tooltips), the federated accuracy next to the server's test-set accuracy of the SAME model
version (the round whose record has that ``model_version``, not the latest round), and say
"off" when no round carries it. The fake server, browser and page watch are the ones of
``test_dashboard.py``; the figures below are those of a real ddgauss run (20 of 40 devices,
digits, 4 rounds), so negative and fractional counts appear as they do in practice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed")

# tests/e2e is not a package: make the repository's tests package importable on its own
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.test_dashboard import (  # noqa: E402, F401
    DEVICE_IDS,
    FakeRun,
    PageWatch,
    ServerThread,
    browser,
    make_fake_app,
)

expect = playwright_sync.expect
pytestmark = pytest.mark.timeout(120)

COUNT_STD = 3.9698941241158376
ACC_STD = 0.19849470620579188
EXAMPLES_STD = 63.5183059858534
# (model version evaluated, federated accuracy, histogram, examples, loss, loss std)
EVALS = [
    (0, 0.31927490234375,
     [18.613, 6.968, -7.863, 4.357, 2.326, 5.194, -3.669, 0.897, -6.590, 4.079],
     173.3203125, None, None),
    (1, 0.26605224609375,
     [14.435, 14.603, -0.235, 1.212, 4.124, 0.956, 0.980, 3.985, 3.332, -0.554],
     167.4140625, None, None),
    (2, 0.23729248046875,
     [-6.802, 7.487, 4.773, -3.188, 10.823, 4.071, 1.634, 5.612, -4.477, 0.979],
     208.109375, 0.5179630602898115, 1.5260798795309776),
    (3, 0.7179931640625,
     [1.842, 3.791, 3.520, 2.639, -6.184, 8.475, -2.921, 2.591, 0.904, 4.271],
     266.9609375, 1.7566796406309444, 1.189655433875104),
]  # fmt: skip
# Server test-set accuracy of the model each round releases (round r releases v r+1):
# v3, which round 3 evaluates, scored 0.54; round 3's own model v4 scored 0.61.
SERVER_ACC = [0.18666666666666668, 0.31555555555555553, 0.54, 0.61]


def federated_eval(i: int) -> dict[str, Any]:
    """The ``federated_eval`` entry of round ``i`` in the shape the server records."""
    version, acc, hist, examples, loss, loss_std = EVALS[i]
    return {
        "buckets": len(hist),
        "histogram": hist,
        "devices": 20,
        "accuracy": acc,
        "accuracy_stddev": ACC_STD,
        "examples": examples,
        "examples_stddev": EXAMPLES_STD,
        "loss": loss,
        "loss_stddev": loss_std,
        "count_stddev": COUNT_STD,
        "model_version": version,
    }


def add_round(run: FakeRun, r: int, *, evaluated: bool, status: str = "done") -> None:
    """Round ``r`` of the fake log; a done round released model version r + 1."""
    done = status == "done"
    run.add_round(r, status, SERVER_ACC[r] if done else None, 1.0 if done else None)
    with run.lock:
        rec = run.rounds[-1]
        if done:
            rec["model_version"] = r + 1
        if evaluated:
            rec["federated_eval"] = federated_eval(r)


def _bar(page: Any, bucket: int) -> Any:
    return page.locator(f"#chart-fe-hist g.hbar[data-bucket='{bucket}']")


def test_panel_draws_noised_histogram_and_aligned_accuracies(
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    run = FakeRun("fashion")
    for r in range(3):
        add_round(run, r, evaluated=True)
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, srv.url)
        page.goto(srv.url)
        expect(page.locator("#fedeval")).to_have_attribute("data-fedeval", "on")
        expect(page.locator("#fe-off")).to_be_hidden()
        expect(page.locator("#fe-acc")).to_have_text("23.7%")  # latest: round 2, model v2

        # Round 3 arrives live: the panel follows the latest evaluation.
        add_round(run, 3, evaluated=True)
        run.bump()
        expect(page.locator("#fe-acc")).to_have_text("71.8%", timeout=10_000)
        # v3 is what round 3 evaluated: the server's 54.0 % (round 2's record), not round 3's 61 %
        expect(page.locator("#fe-server-acc")).to_have_text("54.0%")
        expect(page.locator("#fe-summary")).to_contain_text("Model v3, evaluated in round 3 by 20")
        expect(page.locator("#fe-summary")).to_contain_text("± 19.8%")

        # (b) the histogram: one bar per bucket, negative counts have no height, raw values shown
        expect(page.locator("#chart-fe-hist g.hbar")).to_have_count(10)
        neg = _bar(page, 4)
        assert neg.get_attribute("class") == "hbar neg"
        assert float(neg.locator("rect").get_attribute("height")) == 0.0
        expect(neg.locator("text")).to_have_text("-6.2")
        expect(neg.locator("title")).to_contain_text("-6.184 devices")
        expect(neg.locator("title")).to_contain_text("noise, not an error")
        heights = [float(_bar(page, j).locator("rect").get_attribute("height")) for j in range(10)]
        assert heights[5] > heights[9] > heights[1] > heights[8] > 0, heights
        # heights are proportional to the noised counts
        assert heights[5] / heights[9] == pytest.approx(8.475 / 4.271, rel=1e-3), heights
        expect(_bar(page, 9).locator("title")).to_contain_text("90% ≤ accuracy ≤ 100%")
        caption = page.locator("#fe-hist-caption")
        expect(caption).to_contain_text("noise std 3.97 devices per count")
        expect(caption).to_contain_text("noise, not an error")
        # (c) examples and loss, each with its std
        expect(page.locator("#fe-note")).to_contain_text("held-out examples 267 ± 63.5")
        expect(page.locator("#fe-note")).to_contain_text("loss 1.757 ± 1.19")

        # (a) one federated point per evaluated version, each with its error bar, beside the
        # server's accuracy of the versions it recorded (v0, the initial model, has none)
        acc = page.locator("#chart-fe-acc")
        expect(acc.locator(".s-fe circle.pt")).to_have_count(4)
        expect(acc.locator(".s-acc circle.pt")).to_have_count(3)
        expect(acc.locator(".s-acc circle.pt[data-version='3'] title")).to_have_text(
            "Model v3: server test-set accuracy 54.0%"
        )
        expect(acc.locator(".s-fe circle.pt[data-version='3'] title")).to_contain_text(
            "71.8% ± 39.7% (2 std of the DP noise)"
        )
        assert acc.locator("line.errbar").count() >= 4 * 3  # a bar and two caps per point

        # Another round picked: its histogram and figures; a new round does not move the pick.
        page.select_option("#fe-round", "0")
        expect(page.locator("#fe-acc")).to_have_text("31.9%")
        expect(page.locator("#fe-server-acc")).to_have_text("not recorded")
        expect(page.locator("#fe-note")).to_contain_text("loss not shown")
        expect(_bar(page, 0).locator("text")).to_have_text("18.6")
        add_round(run, 4, evaluated=False, status="aborted")
        run.bump()
        expect(page.locator("#round-table tbody tr")).to_have_count(5, timeout=10_000)
        expect(page.locator("#fe-round option")).to_have_count(4)
        expect(page.locator("#fe-acc")).to_have_text("31.9%")
        assert page.locator("#fe-round").input_value() == "0"

        text = page.locator("body").inner_text()
        assert not [d for d in DEVICE_IDS if str(d) in text]
        assert not watch.foreign, watch.foreign
        assert not watch.errors, watch.errors
        page.close()


def test_panel_says_off_without_federated_eval(
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    run = FakeRun("fashion")
    add_round(run, 0, evaluated=False)
    add_round(run, 1, evaluated=False, status="aborted")
    add_round(run, 2, evaluated=False)
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page()
        watch = PageWatch(page, srv.url)
        page.goto(srv.url)
        expect(page.locator("#chart-acc circle.pt")).to_have_count(2)
        expect(page.locator("#fedeval")).to_have_attribute("data-fedeval", "off")
        expect(page.locator("#fe-off")).to_be_visible()
        expect(page.locator("#fe-off")).to_contain_text("Federated evaluation off")
        expect(page.locator("#fe-body")).to_be_hidden()
        assert page.locator("#chart-fe-hist g.hbar").count() == 0

        # the first evaluated round switches the panel on, live
        add_round(run, 3, evaluated=True)
        run.bump()
        expect(page.locator("#fedeval")).to_have_attribute("data-fedeval", "on", timeout=10_000)
        expect(page.locator("#fe-off")).to_be_hidden()
        expect(page.locator("#chart-fe-hist g.hbar")).to_have_count(10)
        assert not watch.errors, watch.errors
        page.close()
