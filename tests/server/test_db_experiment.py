"""A database carries its experiment: ``python -m server --db FILE`` alone serves a finished
run and its dashboard; a ``--config`` that contradicts the database is a one-line error.

The run is made through the CLI's own start-up path (``settings_from_args``), served
in-process with ``TestClient`` (no uvicorn, no subprocess), so the module stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server._helpers import Device, experiment, run_round


def _settings(argv: list[str]) -> Any:
    from server.__main__ import build_parser, settings_from_args

    return settings_from_args(build_parser().parse_args(argv))


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from server.__main__ import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _no_dp_experiment() -> Any:
    """digits, one round, no noise: the issue's case (an accountant for 'none' events)."""
    from dp import DPConfig

    cfg = experiment(rounds=1, stage_timeout=20.0)
    dp = DPConfig.from_dict({**cfg.dp.to_dict(), "mechanism": "none"})
    return dataclasses.replace(cfg, dp=dp)


@dataclasses.dataclass
class Run:
    db: Path
    config: Any
    status: dict[str, Any]
    rounds: list[dict[str, Any]]
    model: bytes


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One finished round of a non-default experiment, started as ``--db X --config Y``."""
    from fastapi.testclient import TestClient

    from server import create_app

    tmp = tmp_path_factory.mktemp("dbexp")
    cfg = _no_dp_experiment()
    (tmp / "exp.toml").write_text(cfg.to_toml())
    db = tmp / "run.sqlite3"
    settings = _settings(["--db", str(db), "--config", str(tmp / "exp.toml")])
    assert settings.experiment == cfg
    with TestClient(create_app(settings)) as http:
        devs = [Device(http) for _ in range(3)]
        for d in devs:
            d.register()
        assert run_round(devs, encode=False)["stage"] == "done"
        status = http.get("/v1/status").json()
        rounds = http.get("/v1/rounds").json()
        model = http.get("/v1/model").content
    assert status["rounds_done"] == 1
    yield Run(db, cfg, status, rounds, model)


def test_db_alone_serves_the_finished_run_and_its_dashboard(finished: Run) -> None:
    from fastapi.testclient import TestClient

    from server import create_app

    settings = _settings(["--db", str(finished.db)])
    assert settings.experiment == finished.config
    with TestClient(create_app(settings)) as http:
        status = http.get("/v1/status").json()
        assert status["rounds_done"] == 1
        assert status["config"]["training"]["task"] == "digits"
        assert status["config"]["dp"]["mechanism"] == "none"
        assert status["epsilon"] == finished.status["epsilon"]
        assert http.get("/v1/rounds").json() == finished.rounds
        model = http.get("/v1/model")
        assert model.headers["X-Model-Version"] == "1" and model.content == finished.model
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_contradicting_config_is_one_line_exit_2(
    finished: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(experiment(rounds=1).to_toml())  # digits with ddgauss noise
    code, err = _main(["--db", str(finished.db), "--config", str(other)], capsys)
    assert code == 2, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert "contradicts" in err and "dp.mechanism 'ddgauss' (database: 'none')" in err
    assert "Traceback" not in err
    fashion = tmp_path / "fashion.toml"
    fashion.write_text(
        dataclasses.replace(
            finished.config,
            training=dataclasses.replace(finished.config.training, task="linreg"),
        ).to_toml()
    )
    code, err = _main(["--db", str(finished.db), "--config", str(fashion)], capsys)
    assert code == 2 and "training.task 'linreg' (database: 'digits')" in err, err


def test_config_differing_only_in_operational_fields_is_served(
    finished: Run, tmp_path: Path
) -> None:
    cfg = finished.config
    ops = dataclasses.replace(cfg.server, stage_timeout=7.0, rate_limit_burst=5)
    path = tmp_path / "ops.toml"
    path.write_text(dataclasses.replace(cfg, server=ops).to_toml())
    settings = _settings(["--db", str(finished.db), "--config", str(path)])
    assert settings.experiment.server.stage_timeout == 7.0
    assert settings.experiment.server.rate_limit_burst == 5
    from server.config import EXPERIMENT_META_KEY
    from server.store import Store

    store = Store(finished.db)
    try:  # the record keeps the first run's values
        assert store.get_meta(EXPERIMENT_META_KEY) == cfg.to_dict()
    finally:
        store.close()


def test_a_new_database_records_its_experiment_once(tmp_path: Path) -> None:
    from server.config import EXPERIMENT_META_KEY, ExperimentConfig
    from server.store import Store

    cfg = experiment(rounds=2, epsilon_budget=4.0)
    (tmp_path / "exp.toml").write_text(cfg.to_toml())
    db = tmp_path / "new.sqlite3"
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrounds = 0\n")
    with pytest.raises(Exception, match="rounds"):
        _settings(["--db", str(db), "--config", str(bad)])
    assert not db.exists()  # a failed start-up leaves no database behind
    assert _settings(["--db", str(db), "--config", str(tmp_path / "exp.toml")]).experiment == cfg
    store = Store(db)
    try:
        assert ExperimentConfig.from_dict(store.get_meta(EXPERIMENT_META_KEY)) == cfg
    finally:
        store.close()
    assert _settings(["--db", str(db)]).experiment == cfg
    # --data-dir is operational: it overrides the record without contradicting it
    got = _settings(["--db", str(db), "--data-dir", str(tmp_path)]).experiment
    assert got.server.data_dir == str(tmp_path) and got.dp == cfg.dp


def test_database_from_before_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that served before experiments were recorded has only meta ``task``."""
    from server.store import Store

    db = tmp_path / "old.sqlite3"
    store = Store(db)
    store.set_meta("task", "digits")
    store.close()
    code, err = _main(["--db", str(db)], capsys)
    assert code == 2 and "pass the --config it was run with" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (tmp_path / "linreg.toml").write_text(
        '[training]\ntask = "linreg"\n[server]\nclients = 3\nper_round = 3\n'
    )
    code, err = _main(["--db", str(db), "--config", str(tmp_path / "linreg.toml")], capsys)
    assert code == 2 and "belongs to task 'digits', not 'linreg'" in err, err
    cfg = experiment()
    (tmp_path / "digits.toml").write_text(cfg.to_toml())
    assert _settings(["--db", str(db), "--config", str(tmp_path / "digits.toml")]).experiment == cfg
    assert _settings(["--db", str(db)]).experiment == cfg  # recorded from now on


def test_unreadable_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.config import EXPERIMENT_META_KEY
    from server.store import Store

    db = tmp_path / "odd.sqlite3"
    store = Store(db)
    record = experiment().to_dict()
    record["dp"]["colour"] = "blue"
    store.set_meta(EXPERIMENT_META_KEY, record)
    store.close()
    code, err = _main(["--db", str(db)], capsys)
    assert code == 2 and "cannot use" in err and "'colour'" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
