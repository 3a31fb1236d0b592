"""The dashboard (server/static/) in a real headless browser (Chromium via Playwright).

Most tests run the page against a small fake FastAPI app defined here, which serves
server/static exactly like the real server (``/`` and ``/static/...``) and answers the
public endpoints with the shapes of CONTRACT.md; the test advances the fake run and the
page must follow live (long-poll). One test checks that the real ``server.app.create_app``
serves the page and answers it (skipped while that module does not exist).

Skipped only when no Chromium can be found (neither /usr/bin/chromium, Debian package
``chromium``, nor Playwright's own download).
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

expect = playwright_sync.expect

pytestmark = pytest.mark.timeout(120)

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
ALLOWED_PATHS = {
    "/",
    "/static/app.js",
    "/static/style.css",
    "/v1/status",
    "/v1/rounds",
    "/v1/model/meta",
    "/v1/rounds/current",
    "/v1/predict",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Device ids in the fake log: distinctive numbers that must never appear on the page.
DEVICE_IDS = list(range(90101, 90111))


# ---------------------------------------------------------------------------- fake server


class FakeRun:
    """Mutable state of a fake training run, shared between the test and the fake app."""

    def __init__(self, task: str = "fashion") -> None:
        self.lock = threading.Lock()
        self.task = task
        self.version = 1
        self.stage = "waiting"
        self.round: int | None = None
        self.deadline: float | None = None
        self.rounds: list[dict[str, Any]] = []
        self.training_done = False
        self.epsilon = 0.0
        self.epsilon_amplified = 0.0
        self.mechanism = "ddgauss"
        self.fail_status: str | None = None
        self.uploads: list[tuple[str, str, bytes]] = []
        # A race to stage once: the next rounds read takes its answer, then runs this
        # (the server moves on); a status read begun meanwhile waits for it (up to 3 s).
        self.after_rounds_read: Any = None
        self.moved_on = threading.Event()

    def bump(self, **changes: Any) -> None:
        with self.lock:
            for k, v in changes.items():
                setattr(self, k, v)
            self.version += 1

    def add_round(self, r: int, status: str, accuracy: float | None, loss: float | None) -> None:
        sampled = DEVICE_IDS[:8]
        if status == "done":
            dropouts = {"masked_input": [sampled[7]]}
            survivors = sampled[:7]
            self.epsilon += 0.5
            self.epsilon_amplified += 0.2
        else:
            dropouts = {"advertise_keys": sampled[2:7], "share_keys": [sampled[7]]}
            survivors = []
        with self.lock:
            self.rounds.append(
                {
                    "round": r,
                    "status": status,
                    "sampled": sampled,
                    "survivors": survivors,
                    "dropouts": dropouts,
                    "threshold": 5,
                    "accuracy": accuracy,
                    "loss": loss,
                    "metric": "accuracy" if self.task != "linreg" else "r2",
                    "epsilon": self.epsilon,
                    "epsilon_amplified": self.epsilon_amplified,
                    "delta": 1e-5,
                    "epsilon_budget": 4.0,
                    "clip_rate": None,
                    "started_at": 1_700_000_000.0 + 10 * r,
                    "finished_at": 1_700_000_004.5 + 10 * r,
                    "timings": {"advertise_keys": 0.1},
                    **({"abort_reason": "only 2 left, threshold 5"} if status == "aborted" else {}),
                }
            )

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "stage": "finished" if self.training_done else self.stage,
                "round": self.round,
                "version": self.version,
                "training_done": self.training_done,
                "finished_reason": "all planned rounds done" if self.training_done else None,
                "rounds_done": sum(r["status"] == "done" for r in self.rounds),
                "rounds_planned": 5,
                "epsilon": self.epsilon,
                "epsilon_amplified": self.epsilon_amplified,
                "epsilon_budget": 4.0,
                "delta": 1e-5,
                "sample_rate": 0.8,
                "registered": 10,
                "model_version": sum(r["status"] == "done" for r in self.rounds),
                "task": self.task,
                "config": {
                    "protocol": {"active": False},
                    "training": {"task": self.task},
                    "dp": {"mechanism": self.mechanism},
                },
            }

    def current(self) -> dict[str, Any]:
        with self.lock:
            return {
                "round": self.round,
                "stage": "finished" if self.training_done else self.stage,
                "version": self.version,
                "deadline": self.deadline,
                "sampled": False,
                "params": None,
                "plan": None,
                "rotation_seed": None,
                "model_version": sum(r["status"] == "done" for r in self.rounds),
            }


def make_fake_app(run: FakeRun) -> FastAPI:
    """A stand-in for the real server's public endpoints, with the contract's shapes."""
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/v1/status")
    async def status() -> Any:
        if run.fail_status:
            return JSONResponse({"detail": run.fail_status}, status_code=503)
        if run.after_rounds_read is not None:
            end = time.monotonic() + 3.0
            while not run.moved_on.is_set() and time.monotonic() < end:
                await asyncio.sleep(0.02)
        return run.status()

    @app.get("/v1/rounds")
    async def rounds() -> Any:
        with run.lock:
            answer = list(run.rounds)
        move_on, run.after_rounds_read = run.after_rounds_read, None
        if move_on is not None:
            move_on()
            run.moved_on.set()
        return answer

    @app.get("/v1/model/meta")
    async def meta() -> Any:
        if run.task == "linreg":
            shape, classes, names, metric = [8], None, [], "r2"
        else:
            shape, classes, names, metric = [28, 28, 1], 10, FASHION_CLASSES, "accuracy"
        return {
            "version": run.status()["model_version"],
            "task": run.task,
            "dim": 56714 if run.task == "fashion" else 9,
            "dtype": "float32",
            "input_shape": shape,
            "num_classes": classes,
            "class_names": names,
            "metric": metric,
        }

    @app.get("/v1/rounds/current")
    async def current(request: Request, wait: float = 0.0, after: int = -1) -> Any:
        end = time.monotonic() + min(wait, 60.0)
        while run.version <= after and time.monotonic() < end:
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.05)
        return run.current()

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            body = await request.json()
            run.uploads.append(("json", "application/json", repr(body).encode()))
            feats = body.get("features", [])
            if len(feats) != 8:
                return JSONResponse(
                    {"detail": f"cannot use this input: expected 8 features, got {len(feats)}"},
                    status_code=400,
                )
            value = 0.5 + sum(feats)
            return {"label": None, "class_name": None, "scores": [], "value": value,
                    "model_version": 3}  # fmt: skip
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"detail": "multipart body needs a file field named 'file'"}, 400)
        data = await upload.read()
        run.uploads.append((upload.filename or "", upload.content_type or "", data))
        if not data.startswith(b"\x89PNG"):
            return JSONResponse(
                {"detail": "cannot use this input: could not decode the uploaded image"}, 400
            )
        scores = [0.01] * 10
        scores[1] = 0.91
        return {"label": 1, "class_name": "Trouser", "scores": scores, "value": None,
                "model_version": 3}  # fmt: skip

    return app


class ServerThread:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        # Open long-polls must not hold up shutdown for their full wait.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        if CHROMIUM.exists():
            exe: str | None = str(CHROMIUM)
        elif Path(p.chromium.executable_path).exists():
            exe = None  # Playwright's own build
        else:
            pytest.skip(
                "no Chromium: install Debian's 'chromium' package (/usr/bin/chromium) or run "
                "'playwright install chromium'"
            )
        b = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


class PageWatch:
    """Collects the page's requests and JavaScript errors."""

    def __init__(self, page: Any, base: str) -> None:
        self.paths: set[str] = set()
        self.foreign: list[str] = []
        self.errors: list[str] = []
        host = urlsplit(base).netloc
        page.on("request", self._on_request(host))
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(msg.text)
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )

    def _on_request(self, host: str) -> Any:
        def handler(req: Any) -> None:
            parts = urlsplit(req.url)
            if parts.scheme in ("data", "blob"):
                return
            if parts.netloc != host:
                self.foreign.append(req.url)
            else:
                self.paths.add(parts.path)

        return handler


def _png(size: tuple[int, int] = (90, 120)) -> bytes:
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([30, 10, 42, 110], fill=(30, 30, 60))
    draw.rectangle([48, 10, 60, 110], fill=(30, 30, 60))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wait_for_error_cleared(page: Any) -> None:
    expect(page.locator("#server-error")).to_be_hidden(timeout=15_000)


def test_dashboard_follows_a_run_live_and_predicts(browser: Any, tmp_path: Path) -> None:
    run = FakeRun("fashion")
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, srv.url)
        page.goto(srv.url)

        # 1. Before any device: waiting, empty charts.
        expect(page.locator("#stage-text")).to_contain_text("Waiting for devices")
        expect(page.locator("#stage-detail")).to_contain_text("10 device(s) registered")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator('[data-empty-for="chart-acc"]')).to_be_visible()
        expect(page.locator("#card-task")).to_have_text("fashion")

        # 2. Three rounds done, one aborted, round 4 in flight: the page follows (long-poll).
        for r, acc, loss in ((0, 0.52, 1.4), (1, 0.68, 0.95), (2, 0.80, 0.61)):
            run.add_round(r, "done", acc, loss)
        run.add_round(3, "aborted", None, None)
        run.bump(stage="masked_input", round=4, deadline=time.time() + 20)

        expect(page.locator("#chart-acc circle.pt")).to_have_count(3, timeout=10_000)
        expect(page.locator("#chart-loss circle.pt")).to_have_count(3)
        expect(page.locator("#chart-eps .s-eps circle.pt")).to_have_count(4)
        expect(page.locator("#chart-eps .s-epsamp circle.pt")).to_have_count(4)
        expect(page.locator("#chart-eps .hline.budget")).to_contain_text("budget")
        expect(page.locator("#chart-part g.bar")).to_have_count(4)
        expect(page.locator("#chart-part g.bar.aborted")).to_have_count(1)
        # Axes carry labels and ticks.
        expect(page.locator("#chart-acc .axis-label").first).to_have_text("round")
        assert page.locator("#chart-acc .axis text").count() >= 6
        expect(page.locator("#stage-text")).to_contain_text("Round 4")
        expect(page.locator("#stage-text")).to_contain_text("masked")
        expect(page.locator("#steps li[aria-current=step]")).to_have_attribute(
            "data-step", "masked_input"
        )
        expect(page.locator("#steps li.done")).to_have_count(2)
        expect(page.locator("#stage-detail")).to_contain_text("deadline")
        expect(page.locator("#card-acc")).to_have_text("80.0%")
        expect(page.locator("#card-eps")).to_have_text("1.5 / 4")
        expect(page.locator("#card-rounds")).to_have_text("3 / 5")
        expect(page.locator("#round-table tbody tr")).to_have_count(4)
        expect(page.locator("#round-table tbody tr.st-aborted td").nth(3)).to_contain_text(
            "5 at advertise keys"
        )

        # 3. Training finished.
        run.add_round(4, "done", 0.84, 0.5)
        run.bump(stage="finished", round=None, deadline=None, training_done=True)
        expect(page.locator("#stage-text")).to_have_text("Training finished", timeout=10_000)
        expect(page.locator("#stage-detail")).to_contain_text("4 of 5 planned rounds")
        expect(page.locator("#chart-acc circle.pt")).to_have_count(4)

        # 4. Upload an image: the global model's prediction.
        png = _png()
        page.set_input_files(
            "#predict-file",
            files=[{"name": "trousers.png", "mimeType": "image/png", "buffer": png}],
        )
        expect(page.locator("#predict-preview")).to_be_visible()
        page.click("#predict-btn")
        expect(page.locator("#pred-class")).to_have_text("Trouser", timeout=10_000)
        expect(page.locator("#prediction .scores li")).to_have_count(5)
        expect(page.locator("#prediction .scores li").first).to_contain_text("91.0%")
        assert run.uploads[-1] == ("trousers.png", "image/png", png)

        # 5. A server error is shown as text.
        page.set_input_files(
            "#predict-file",
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}],
        )
        page.click("#predict-btn")
        err = page.locator("#predict-error")
        expect(err).to_be_visible()
        expect(err).to_contain_text("400")
        expect(err).to_contain_text("could not decode the uploaded image")

        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if os.environ.get("DASHBOARD_SCREENSHOT"):
            page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"], full_page=True)

        # Aggregates only: no device id is ever shown.
        text = page.locator("body").inner_text()
        leaked = [d for d in DEVICE_IDS if str(d) in text]
        assert not leaked, leaked
        assert watch.paths <= ALLOWED_PATHS, watch.paths - ALLOWED_PATHS
        assert "/v1/rounds/current" in watch.paths  # it long-polls
        assert not watch.foreign, watch.foreign  # no external network
        assert not watch.errors, watch.errors
        page.close()


def test_dashboard_shows_server_errors_and_recovers(browser: Any) -> None:
    run = FakeRun("fashion")
    run.fail_status = "store unavailable"
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        expect(page.locator("#server-error")).to_contain_text("503")
        expect(page.locator("#server-error")).to_contain_text("store unavailable")
        expect(page.locator("#conn")).to_have_attribute("data-state", "error")
        run.fail_status = None
        _wait_for_error_cleared(page)
        expect(page.locator("#stage-text")).to_contain_text("Waiting for devices")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        page.close()


def test_dashboard_states_the_caveat_of_the_mechanism(browser: Any) -> None:
    """A proven mechanism's ε carries no caveat; gaussian's says it is an approximation."""
    run = FakeRun("fashion")
    run.add_round(0, "done", 0.5, 1.0)
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        expect(page.locator("#card-acc")).to_contain_text("50")
        expect(page.locator("#eps-caveat")).to_be_hidden()
        run.mechanism = "gaussian"
        run.bump()
        expect(page.locator("#eps-caveat")).to_contain_text("approximation, not a proof")
        page.close()


def test_dashboard_is_not_left_stale_when_the_last_round_lands_mid_refresh(
    browser: Any,
) -> None:
    """The run finishes between the page's read of the round log and its read of the
    status (the real server releases a round in a worker thread while it answers reads).
    The page must not keep the older log under a "finished" status: it reads the status
    first, so a newer state is always seen as a newer version and read again."""
    run = FakeRun("fashion")
    run.add_round(0, "done", 0.5, 1.0)
    run.bump(stage="masked_input", round=1)
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        expect(page.locator("#chart-acc circle.pt")).to_have_count(1)
        expect(page.locator("#stage-text")).not_to_have_text("No data yet")

        def last_round_lands() -> None:
            run.add_round(1, "done", 0.75, 0.8)
            run.bump(training_done=True, round=None)

        run.after_rounds_read = last_round_lands
        run.bump(stage="unmasking")  # the page's long-poll wakes and refreshes
        expect(page.locator("#stage-text")).to_have_text("Training finished", timeout=15_000)
        assert run.moved_on.is_set()  # the staged race did happen
        expect(page.locator("#chart-acc circle.pt")).to_have_count(2)
        expect(page.locator("#round-table tbody tr")).to_have_count(2)
        expect(page.locator("#card-acc")).to_have_text("75.0%")
        page.close()


def test_dashboard_regression_task_features(browser: Any) -> None:
    run = FakeRun("linreg")
    run.add_round(0, "done", 0.93, 0.05)
    with ServerThread(make_fake_app(run)) as srv:
        page = browser.new_page(viewport={"width": 420, "height": 900})  # phone-sized
        page.goto(srv.url)
        expect(page.locator("#card-metric-h")).to_have_text("R²")
        expect(page.locator("#card-acc")).to_have_text("0.93")
        expect(page.locator("#features-field")).to_be_visible()
        page.fill("#predict-features", "0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1")
        page.click("#predict-btn")
        expect(page.locator("#pred-class")).to_have_text("1.3")
        # The layout fits a narrow screen: no horizontal page scroll.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, width
        page.close()


def _real_create_app() -> Any:
    try:
        from server.app import create_app
    except ImportError as err:
        pytest.skip(f"server.app.create_app not available yet ({err})")
    return create_app


def test_real_server_serves_the_dashboard(tmp_path: Path) -> None:
    """The real app serves this page at / and its assets under /static (no lifespan needed)."""
    create_app = _real_create_app()
    from fastapi.testclient import TestClient

    from clients.tasks import TrainingConfig
    from server.config import AppSettings, ExperimentConfig, ServerConfig

    experiment = ExperimentConfig(
        server=ServerConfig(rounds=2, clients=3, per_round=3),
        training=TrainingConfig(task="digits"),
    )
    settings = AppSettings(experiment=experiment, db_path=tmp_path / "db.sqlite3", autostart=False)
    client = TestClient(create_app(settings))  # not entered: no model is built
    index = client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.text == (STATIC / "index.html").read_text(encoding="utf-8")
    for asset, ctype in (("static/app.js", "javascript"), ("static/style.css", "text/css")):
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert ctype in resp.headers["content-type"], resp.headers["content-type"]
        assert resp.content == (STATIC / asset.split("/", 1)[1]).read_bytes()


def test_real_training_run_in_the_browser(browser: Any, tmp_path: Path) -> None:
    """A short real run (server subprocess + 3 devices, digits): the page follows it live."""
    _real_create_app()
    try:
        from clients.engines.http import HttpEngine as Simulation
        from clients.options import SimOptions
    except ImportError as err:
        pytest.skip(f"clients.engines.http not available ({err})")
    import httpx

    opts = SimOptions(
        task="digits",
        clients=3,
        per_round=3,
        rounds=2,
        local_epochs=1,
        batch_size=32,
        lr=0.1,
        graph="complete",
        noise_multiplier=0.1,
        stage_timeout=10.0,
        seed=1,
        keep_serving=True,
    )
    sim = Simulation(opts, workdir=tmp_path)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = sim.run()
        except Exception as err:  # reported by the assertions below
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None:
            assert "error" not in outcome, outcome.get("error")
            assert time.monotonic() < deadline, "the simulation's server did not come up"
            server = sim.server
            if server is not None:
                try:
                    if httpx.get(server.url + "/v1/status", timeout=2).status_code == 200:
                        url = server.url + "/"
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        page = browser.new_page()
        watch = PageWatch(page, url)
        page.add_init_script(
            "window.__stages = [];"
            "new MutationObserver(() => { const s = document.getElementById('status');"
            " if (s && window.__stages.at(-1) !== s.dataset.stage)"
            " window.__stages.push(s.dataset.stage); })"
            ".observe(document,"
            " {subtree: true, attributes: true, attributeFilter: ['data-stage']});"
        )
        page.goto(url)
        expect(page.locator("#stage-text")).to_have_text("Training finished", timeout=90_000)
        expect(page.locator("#chart-acc circle.pt")).to_have_count(2)
        expect(page.locator("#chart-eps .s-eps circle.pt")).to_have_count(2)
        expect(page.locator("#chart-part g.bar")).to_have_count(2)
        expect(page.locator("#round-table tbody tr")).to_have_count(2)
        expect(page.locator("#card-rounds")).to_have_text("2 / 2")
        thread.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        rounds = outcome["result"].rounds
        last = rounds[-1]
        expect(page.locator("#card-acc")).to_have_text(f"{100 * last['accuracy']:.1f}%")
        page.set_input_files(
            "#predict-file",
            files=[{"name": "digit.png", "mimeType": "image/png", "buffer": _png((40, 40))}],
        )
        page.click("#predict-btn")
        expect(page.locator("#pred-class")).to_have_text(
            __import__("re").compile(r"^[0-9]$"), timeout=20_000
        )
        expect(page.locator("#prediction")).to_contain_text("global model v2")
        stages = page.evaluate("window.__stages")
        assert stages[-1] == "finished", stages
        assert watch.paths <= ALLOWED_PATHS, watch.paths - ALLOWED_PATHS
        assert not watch.errors, watch.errors
        page.close()
    finally:
        sim.stop()
        thread.join(timeout=30)
