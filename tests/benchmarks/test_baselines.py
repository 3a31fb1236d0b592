"""The external baselines' driver (``benchmarks/baselines.py``) and shared workload
(``benchmarks/sim_workload.py``): result parsing, every error path, the subprocess
round trip with a stand-in harness, and that the harnesses' rebuilt CNN is the
``fashion`` task's. No venv is created and no baseline is run here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import baselines as bl
from benchmarks import sim_workload as wl


def result_line(**fields: object) -> str:
    record = {"ok": True, "version": "0.6.0", "rounds": 5, "warmup": 2,
              "seconds_per_round": 1.5, "accuracy": 0.4, "floor_seconds": 1.2,
              "ratio_to_floor": 1.25,
              "round_times": [3.0, 2.0, 1.5, 1.4, 1.6], "load_after_rounds": [1.0, 0.5, 0.2],
              "tensorflow": "2.21.0", "keras": "tf_keras 2.21.0"}
    record.update(fields)
    return wl.RESULT_PREFIX + json.dumps(record)


def parse(stdout: str, stderr: str = "", rc: int = 0, rounds: int = 5) -> dict:
    return bl.parse_harness_output("pfl-research", stdout, stderr, rc, expected_rounds=rounds)


def assert_error(rec: dict, *fragments: str) -> None:
    assert rec["status"] == "error"
    assert rec["seconds_per_round"] is None and rec["accuracy"] is None
    for fragment in fragments:
        assert fragment in rec["error"], rec["error"]
    assert rec["notes"].startswith("no figure:")


def test_ok_line_among_logs_gives_figures_and_floor_ratio() -> None:
    out = "\n".join(["INFO something", '{"not": "the result"}', result_line(), "trailing log"])
    rec = parse(out)
    assert rec["status"] == "ok"
    assert rec["seconds_per_round"] == 1.5 and rec["accuracy"] == 0.4
    assert rec["version"] == "0.6.0" and rec["rounds"] == 5
    assert rec["ratio_to_floor"] == pytest.approx(1.25)
    assert "median of rounds 3..5" in rec["notes"] and "ratio 1.25" in rec["notes"]


def test_last_result_line_wins_and_floor_is_optional() -> None:
    last = json.loads(result_line()[len(wl.RESULT_PREFIX):])
    del last["floor_seconds"], last["ratio_to_floor"]
    out = result_line(seconds_per_round=9.0) + "\n" + wl.RESULT_PREFIX + json.dumps(last)
    rec = parse(out)
    assert rec["seconds_per_round"] == 1.5
    assert rec["floor_seconds"] is None and rec["ratio_to_floor"] is None


def test_no_result_line_quotes_exit_code_and_last_useful_stderr_line() -> None:
    stderr = "Traceback (most recent call last):\nImportError: no module named pfl\n" \
             "I0000 00:00 port.cc:153] oneDNN noise\n"
    assert_error(parse("some log\n", stderr, rc=3), "exit 3", "ImportError: no module named pfl")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (wl.RESULT_PREFIX + "{not json", "unreadable result line"),
        (wl.RESULT_PREFIX + "[1, 2]", "not an object"),
        (wl.RESULT_PREFIX + json.dumps({"ok": False, "error": "RuntimeError: boom"}),
         "harness reported: RuntimeError: boom"),
        (result_line(rounds=4), "ran 4 rounds, asked for 5"),
        (result_line(accuracy=1.5), "accuracy is 1.5"),
        (result_line(seconds_per_round=0.0), "not positive"),
        (result_line(seconds_per_round="fast"), "not a number"),
        (result_line(accuracy=None), "accuracy is None"),
        (result_line(ratio_to_floor=None), "ratio_to_floor is None"),
        (result_line(ratio_to_floor=-1.0), "with ratio_to_floor -1.0"),
    ],
)
def test_bad_result_lines_give_error_records(line: str, fragment: str) -> None:
    assert_error(parse(line), fragment)


def test_nonzero_exit_after_a_result_line_is_an_error() -> None:
    assert_error(parse(result_line(), rc=1), "exit 1 after a result line")


def make_fake_venv(tmp_path: Path, harness_code: str) -> bl.Venv:
    """A 'venv' whose python is this interpreter and whose harness is ``harness_code``."""
    venv = bl.Venv("fake", tmp_path / "venv", ("fake==1",), tmp_path / "harness.py", "fake")
    (venv.path / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv.python)
    venv.stamp.write_text(venv.stamp_text())
    venv.harness.write_text(harness_code)
    return venv


def test_run_harness_round_trip_with_a_stand_in_harness(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "rounds = int(sys.argv[sys.argv.index('--rounds') + 1])\n"
        "print('log line')\n"
        f"print({wl.RESULT_PREFIX!r} + json.dumps({{'ok': True, 'rounds': rounds, "
        "'warmup': 1, 'seconds_per_round': 2.0, 'accuracy': 0.5, 'version': 'x', "
        "'argv': sys.argv[1:]}))\n"
    )
    venv = make_fake_venv(tmp_path, code)
    rec = bl.run_harness(venv, ["--warmup", "1"], rounds=3, timeout_s=60)
    assert rec["status"] == "ok", rec
    assert rec["seconds_per_round"] == 2.0 and rec["rounds"] == 3
    assert rec["raw"]["argv"] == ["--rounds", "3", "--warmup", "1"]
    assert len(rec["load_avg_1m"]) == 2


def test_run_harness_timeout_is_an_error_record(tmp_path: Path) -> None:
    venv = make_fake_venv(tmp_path, "import time\ntime.sleep(30)\n")
    assert_error(bl.run_harness(venv, [], rounds=3, timeout_s=0.5), "did not finish within")


def test_missing_venv_without_creation_is_an_error_record(tmp_path: Path) -> None:
    venv = bl.Venv("gone", tmp_path / "gone", ("x==1",), tmp_path / "h.py", "gone")
    assert_error(bl.run_harness(venv, [], rounds=3, timeout_s=5, create_venv=False),
                 "venv not found")


def test_ensure_venv_is_a_no_op_when_stamped_and_explains_a_missing_python(
    tmp_path: Path,
) -> None:
    venv = make_fake_venv(tmp_path, "")
    assert bl.ensure_venv(venv, base_python="/nonexistent/python3.11") == venv.python
    venv.stamp.write_text("older==0\n")  # pins changed: a reinstall is due
    with pytest.raises(bl.BaselineUnavailable, match="/nonexistent/python3.11 not found"):
        bl.ensure_venv(venv, base_python="/nonexistent/python3.11")
    assert bl.run_harness(venv, [], rounds=3, timeout_s=5)["status"] == "error"


def test_rounds_must_exceed_warmup_before_anything_runs() -> None:
    assert_error(bl.run_pfl(2, warmup=2, create_venv=False), "must exceed warmup")
    assert_error(bl.run_flower_sim(1, warmup=2, create_venv=False), "must exceed warmup")
    assert_error(bl.run_flower_sim(5, client_cpus=0.0, create_venv=False),
                 "client_cpus must be > 0")


def test_cli_bad_flag_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bl.main(["run", "pfl", "--rounds", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_iid_shards_are_distinct_and_validated() -> None:
    shards = wl.iid_shards(600, 10, 60, seed=3)
    assert shards.shape == (10, 60) and len(np.unique(shards)) == 600
    assert np.array_equal(shards, wl.iid_shards(600, 10, 60, seed=3))
    with pytest.raises(ValueError, match="exceed the 599"):
        wl.iid_shards(599, 10, 60, seed=3)


def test_rebuilt_cnn_is_the_fashion_tasks_model() -> None:
    from clients.tasks.fashion import FashionTask

    ours = FashionTask().build_model(seed=0)
    rebuilt = wl.build_fashion_cnn(seed=0)
    assert wl.check_params(rebuilt) == ours.count_params() == wl.FASHION_PARAMS
    keys = ("filters", "kernel_size", "strides", "padding", "pool_size", "units", "activation")

    def layers(model: object) -> list[tuple[str, dict, list[tuple[int, ...]]]]:
        return [(type(layer).__name__,
                 {k: layer.get_config().get(k) for k in keys},
                 [tuple(w.shape) for w in layer.weights]) for layer in model.layers]

    assert layers(rebuilt) == layers(ours)
    # Same seeded Glorot draws as the task's initializers (same Keras 2 here).
    for a, b in zip(rebuilt.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_harness_data_is_the_fashion_tasks_data() -> None:
    if not (wl.FASHION_DIR / wl.FASHION_FILES["y_test"]).is_file():
        pytest.skip(f"Fashion-MNIST not installed at {wl.FASHION_DIR}")
    from clients.tasks.fashion import FashionTask

    data = FashionTask().load_data()
    x_train, y_train, x_test, y_test = wl.load_fashion()
    np.testing.assert_array_equal(x_test, data.x_test)
    np.testing.assert_array_equal(y_test, data.y_test)
    np.testing.assert_array_equal(y_train, data.y_train)
    np.testing.assert_array_equal(x_train, data.x_train)
    assert x_train.shape == (60_000, 28, 28, 1)


def test_compiled_floor_sums_the_same_deltas_as_a_plain_sgd_loop() -> None:
    """The floor does the whole workload (every device's full local update), not less."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=40).astype(np.int64)
    shards = wl.iid_shards(40, 4, 10, seed=1)
    floor = wl.CompiledFloor(x, y, shards, cohort=4, epochs=2, batch=4, lr=0.05, seed=0)
    assert floor.one_pass() > 0
    got = [s.numpy() for s in floor._sums]

    model = wl.build_fashion_cnn(seed=0)
    step = wl.make_sgd_step(model, 0.05)
    start = model.get_weights()
    want = [np.zeros_like(w) for w in start]
    for dev in range(4):  # cohort = all 4 devices; the order does not change the sum
        model.set_weights(start)
        xd, yd = x[shards[dev]], y[shards[dev]]
        for _ in range(2):
            for b in range(0, 10, 4):
                step(xd[b : b + 4], yd[b : b + 4])
        want = [acc + w - s for acc, w, s in zip(want, model.get_weights(), start, strict=True)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_floor_fields_pair_each_round_with_the_pass_after_it() -> None:
    fields = wl.floor_fields([9.0, 2.0, 6.0, 3.0], [1.0, 1.0, 2.0, 1.0], warmup=1)
    assert fields["floor_seconds"] == 1.0  # median of the timed rounds' passes 1, 2, 1
    assert fields["ratio_to_floor"] == 3.0  # median of 2/1, 6/2, 3/1
    with pytest.raises(ValueError, match="3 floor passes for 4 rounds"):
        wl.floor_fields([9.0, 2.0, 6.0, 3.0], [1.0, 1.0, 2.0], warmup=1)
