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
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

# tests/e2e is not a package: make the repository's tests package importable when this
# file runs on its own (the whole suite imports it through tests/server already)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.server._helpers import Device, run_round, settings  # noqa: E402

expect = playwright_sync.expect
pytestmark = pytest.mark.timeout(180)

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "browser-test-token-" + "k" * 30
DONE_ROWS = "#round-table tbody tr.st-done"


class Served:
    """The real app under uvicorn on a free loopback port, in a daemon thread."""

    def __init__(self, tmp: Path) -> None:
        from server import create_app

        app = create_app(
            settings(tmp, static_dir=STATIC, rounds=40, clients=3, per_round=3, eval_every=0),
            operator_token=TOKEN,
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self.thread.start()
        end = time.monotonic() + 90
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        if CHROMIUM.exists():
            exe: str | None = str(CHROMIUM)
        elif Path(p.chromium.executable_path).exists():
            exe = None
        else:
            pytest.skip("no Chromium: install Debian's 'chromium' or 'playwright install chromium'")
        b = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


def _done_rows(page: Any) -> int:
    return int(page.locator(DONE_ROWS).count())


def test_pause_stops_new_rounds_and_resume_continues_them(browser: Any, tmp_path: Path) -> None:
    with Served(tmp_path) as srv, Devices(srv.url) as fleet:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(srv.url + "/")
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
        rounds_seen = len(httpx.get(srv.url + "/v1/rounds").json())
        # No new round starts while paused, though the devices keep polling for one.
        page.wait_for_timeout(2500)
        expect(page.locator("#status")).to_have_attribute("data-stage", "paused")
        assert _done_rows(page) == held
        assert page.locator("#round-table tbody tr.st-running").count() == 0
        assert len(httpx.get(srv.url + "/v1/rounds").json()) == rounds_seen
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
