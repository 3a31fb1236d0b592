"""server.config: validated at construction, errors quote the bad value, TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, ExperimentConfig, ServerConfig


def test_defaults_and_toml_roundtrip(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_dict(
        {
            "server": {"rounds": 4, "clients": 5, "per_round": 3, "epsilon_budget": 8.0},
            "protocol": {"graph": "complete", "active": True},
            "dp": {"mechanism": "skellam", "bits": 18},
            "training": {"task": "linreg", "lr": 0.1},
        }
    )
    path = tmp_path / "x.toml"
    path.write_text(cfg.to_toml())
    back = ExperimentConfig.from_toml(path)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert ExperimentConfig() == ExperimentConfig.from_dict({})


@pytest.mark.parametrize(
    "server,needle",
    [
        ({"rounds": 0}, "0"),
        ({"per_round": 20, "clients": 10}, "20"),
        ({"clients": "ten"}, "'ten'"),
        ({"server_lr": -1.0}, "-1.0"),
        ({"momentum": 1.5}, "1.5"),
        ({"stage_timeout": float("inf")}, "inf"),
        ({"accountant": "moments"}, "'moments'"),
        ({"epsilon_budget": 0}, "0"),
        ({"rate_limit_per_s": True}, "True"),
    ],
)
def test_bad_server_values_are_quoted(server: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        ServerConfig.from_dict(server)
    assert needle in str(err.value) and "server." in str(err.value)


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({"srever": {}}, "'srever'"),
        ({"server": {"round": 3}}, "'round'"),
        ({"dp": {"bits": 3}}, "3"),
        ({"protocol": {"graph": "ring"}}, "'ring'"),
        ({"training": {"task": "imagenet"}}, "'imagenet'"),
        ({"server": []}, "[]"),
    ],
)
def test_bad_documents(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(doc)
    assert needle in str(err.value)


def test_bad_toml_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[server\nrounds = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(p)
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml")


def test_public_dict_hides_local_paths() -> None:
    cfg = ExperimentConfig(server=ServerConfig(data_dir="/home/me/data"))
    assert "data_dir" not in cfg.public_dict()["server"]
    assert cfg.to_dict()["server"]["data_dir"] == "/home/me/data"
