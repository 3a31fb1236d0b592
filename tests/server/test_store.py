"""server.store (SQLite): the pieces a restart relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.store import Store, StoreError


def test_devices_models_rounds_roundtrip(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    s = Store(db)
    assert s.register_device(b"a" * 32) == (0, True)
    assert s.register_device(b"b" * 32) == (1, True)
    assert s.register_device(b"a" * 32) == (0, False)
    w = np.arange(5, dtype=np.float32)
    s.save_model(0, w)
    s.put_round({"round": 0, "status": "running"})
    s.finish_round_with_model(
        {"round": 0, "status": "done"}, {"plan": 1}, 3, 0.5, 1, w + 1, np.ones(5, np.float32)
    )
    s.put_round({"round": 1, "status": "running"})
    s.set_meta("task", "digits")
    s.close()

    s = Store(db)
    assert s.device_keys() == {0: b"a" * 32, 1: b"b" * 32} and s.device_key(7) is None
    assert s.abort_running("crash") == [1]
    assert [(r["round"], r["status"]) for r in s.rounds()] == [(0, "done"), (1, "aborted")]
    assert s.rounds()[1]["abort_reason"] == "crash"
    latest = s.latest_model()
    assert latest is not None and latest.version == 1 and latest.round == 0
    assert np.array_equal(latest.weights, w + 1) and latest.momentum is not None
    assert s.privacy_events() == [({"plan": 1}, 3, 0.5)]
    assert (
        s.next_round_id() == 2 and s.get_meta("task") == "digits" and s.model_versions() == [0, 1]
    )
    s.close()


def test_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing" / "x.sqlite3")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(junk)


