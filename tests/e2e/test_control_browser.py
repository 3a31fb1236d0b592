"""The dashboard's operator controls in a real browser against the real server.

The real app (``server.app.create_app``, digits) runs under uvicorn in a thread; three
test devices (``tests.server._helpers``) take part in every round from another thread.
In headless Chromium the operator unlocks the controls with the token, pauses: the
round in flight ends, the page says "paused" and no round starts while the devices keep
polling; then resumes and the rounds continue. The page shows the change log.

Skipped only when no Chromium can be found (Debian's /usr/bin/chromium or Playwright's).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
import httpx  # noqa: E402

# tests/e2e is not a package: make the repository's tests package importable when this
# file runs on its own (the whole suite imports it through tests/server already)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# the dashboard tests' browser (Debian chromium, the same flags) and uvicorn thread
from tests.e2e.test_dashboard import ServerThread, browser  # noqa: E402, F401
from tests.server._helpers import Device, run_round, settings  # noqa: E402

expect = playwright_sync.expect
pytestmark = pytest.mark.timeout(180)

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"
TOKEN = "browser-test-token-" + "k" * 30
DONE_ROWS = "#round-table tbody tr.st-done"


def _serve(tmp: Path) -> ServerThread:
    """The real app (digits, 40 rounds of 3 devices) under uvicorn in a thread."""
    from server import create_app

    app = create_app(
        settings(tmp, static_dir=STATIC, rounds=40, clients=3, per_round=3, eval_every=0),
        operator_token=TOKEN,
    )
    return ServerThread(app)


class Devices:
    """Three devices that run every round until stopped (errors after stop are ignored)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.devs = [Device(self.http) for _ in range(3)]
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            for d in self.devs:
                d.register()
            while not self.stop.is_set():
                if run_round(self.devs, encode=False)["stage"] == "done":
                    self.rounds += 1
        except BaseException as err:  # reported unless the test is already stopping us
            if not self.stop.is_set():
                self.error = err

    def __enter__(self) -> Devices:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _done_rows(page: Any) -> int:
    return int(page.locator(DONE_ROWS).count())


def test_pause_stops_new_rounds_and_resume_continues_them(
    browser: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    with _serve(tmp_path) as srv, Devices(srv.url.rstrip("/")) as fleet:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(srv.url)
        expect(page.locator(DONE_ROWS).first).to_be_visible(timeout=60_000)
        assert fleet.error is None, fleet.error

        # Locked until the token is given; a wrong token is refused with the reason.
        expect(page.locator("#settings-btn")).to_be_disabled()
        page.fill("#control-token", "not-the-token")
        page.click("#token-btn")
        expect(page.locator("#control-error")).to_contain_text("401")
        expect(page.locator("#settings-btn")).to_be_disabled()
        page.fill("#control-token", TOKEN)
        page.click("#token-btn")
        expect(page.locator("#settings-btn")).to_be_enabled()
        expect(page.locator("#device-list input[type=checkbox]")).to_have_count(3)

        page.click("#ctl-pause")
        expect(page.locator("#control-msg")).to_contain_text("paus")
        # the round in flight ends, then the server sits in "paused"
        expect(page.locator("#status")).to_have_attribute("data-stage", "paused", timeout=60_000)
        expect(page.locator("#stage-text")).to_contain_text("Paused by the operator")
        expect(page.locator("#change-log li[data-action=pause]")).to_have_count(1)
        expect(page.locator("#round-table tbody tr.change")).to_have_count(1)
        expect(page.locator("#round-table tbody tr.change")).to_contain_text("paused")
        held = _done_rows(page)
        rounds_seen = len(httpx.get(srv.url + "v1/rounds").json())
        # No new round starts while paused, though the devices keep polling for one.
        page.wait_for_timeout(2500)
        expect(page.locator("#status")).to_have_attribute("data-stage", "paused")
        assert _done_rows(page) == held
        assert page.locator("#round-table tbody tr.st-running").count() == 0
        assert len(httpx.get(srv.url + "v1/rounds").json()) == rounds_seen
        assert fleet.error is None, fleet.error

        page.click("#ctl-resume")
        expect(page.locator("#control-msg")).to_contain_text("resumed")
        page.wait_for_function(
            f"document.querySelectorAll({DONE_ROWS!r}).length >= {held + 2}", timeout=60_000
        )
        expect(page.locator("#change-log li[data-action=resume]")).to_have_count(1)
        assert page.locator("#status").get_attribute("data-stage") != "paused"
        assert fleet.error is None, fleet.error
        assert not errors, errors
        if os.environ.get("CONTROL_SCREENSHOT"):
            page.screenshot(path=os.environ["CONTROL_SCREENSHOT"], full_page=True)
        page.close()
