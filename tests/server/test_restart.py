"""A real uvicorn server (``python -m server``): restart keeps rounds, models and ε; a crash
mid-round leaves that round aborted and the next round succeeds; bad flags exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server._helpers import Device, experiment, run_round, wait_stage

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.tmp / "server.sqlite3"),
            "--config",
            str(self.tmp / "exp.toml"),
            "--log-file",
            str(self.tmp / "server.log"),
            "--log-level",
            "warning",
        ]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        out = open(self.tmp / "stdout.txt", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        end = time.monotonic() + 90
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError((self.tmp / "stdout.txt").read_text()[-2000:])
            try:
                if httpx.get(f"{self.url}/v1/status", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # waiting for a child process to bind: no event to wait on
        raise AssertionError("server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    cfg = experiment(rounds=3, clients=3, per_round=3, stage_timeout=30.0)
    (tmp_path / "exp.toml").write_text(cfg.to_toml())
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        srv.kill()


def test_crash_mid_round_then_restart(server: Server) -> None:
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        devs = [Device(http) for _ in range(3)]
        for d in devs:
            d.register()
        end = run_round(devs, encode=False)
        assert end["stage"] == "done"
        model_before = http.get("/v1/model").content
        eps_before = http.get("/v1/status").json()["epsilon"]
        # round 1: keys arrive, then the server dies in share_keys
        state = wait_stage(devs[0], {"advertise_keys"})
        assert state["round"] == 1
        from secagg import ClientProtocol, RoundParams

        params = RoundParams.from_dict(state["params"])
        for d in devs:
            msg = ClientProtocol(params, d.device_id).advertise_keys().to_dict()
            assert d.post_json("/v1/rounds/1/keys", msg).status_code == 202
        wait_stage(devs[0], {"share_keys"}, rid=1)
    server.kill()

    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        log = http.get("/v1/rounds").json()
        assert [(r["round"], r["status"]) for r in log[:2]] == [(0, "done"), (1, "aborted")]
        assert "restarted" in log[1]["abort_reason"]
        r = http.get("/v1/model")
        assert r.headers["X-Model-Version"] == "1" and r.content == model_before
        st = http.get("/v1/status").json()
        assert st["epsilon"] == pytest.approx(eps_before) and st["rounds_done"] == 1
        assert st["registered"] == 3
        devs2 = [Device(http, key=d.key) for d in devs]
        for old, new in zip(devs, devs2, strict=True):
            assert new.register() == old.device_id  # identities survive the restart
        end = run_round(devs2, encode=False)
        assert end["stage"] == "done" and end["round"] == 2
        st = http.get("/v1/status").json()
        assert st["epsilon"] > eps_before and st["rounds_done"] == 2
        assert http.get("/v1/model").headers["X-Model-Version"] == "2"
        # a message for the aborted round is refused, not a 500
        r = devs2[0].post_json("/v1/rounds/1/shares", {"ciphertexts": {}})
        assert r.status_code == 409
    log_text = (server.tmp / "server.log").read_text()
    assert "round 1 was in flight" in log_text and "round 2 done" in log_text


def test_cli_bad_flag_subprocess_exit_2() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "server", "--port", "abc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "port must be an integer" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bogus"], "unrecognized arguments"),
        (["--port", "70000"], "65535"),
        (["--config", "/nonexistent/x.toml"], "config file not found"),
        (["--db", "/nonexistent/dir/x.db"], "database folder does not exist"),
        (["--config", "BAD"], "'many'"),
        (["--config", "UNKNOWN"], "'colour'"),
        (["--data-dir", "/nonexistent/data"], "cannot load its data"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nper_round = "many"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[dp]\ncolour = "blue"\n')
    args = [str(bad) if a == "BAD" else str(unknown) if a == "UNKNOWN" else a for a in args]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 2 and needle in err, err  # usage line + error at most
    assert "Traceback" not in err
