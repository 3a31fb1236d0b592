"""Fixtures for the server tests: a TestClient app on a temporary SQLite file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_client(tmp: Path, protocol: dict[str, Any] | None = None, **server: Any) -> Any:
    from fastapi.testclient import TestClient

    from server import create_app
    from tests.server._helpers import settings

    return TestClient(create_app(settings(tmp, protocol=protocol, **server)))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def client(module_tmp: Path) -> Iterator[Any]:
    """An app with 3 expected devices, 3 per round, long deadlines (honest rounds)."""
    with make_client(
        module_tmp, rounds=3, clients=3, per_round=3, stage_timeout=5.0, max_json_bytes=65536
    ) as c:
        yield c
