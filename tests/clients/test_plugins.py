"""Plug-ins reached without editing the framework: import paths and entry points.

A tiny package is written into a temporary folder (a task: logistic regression on
scikit-learn's bundled breast-cancer data; a mechanism and a graph that rename built-ins)
and put on PYTHONPATH. ``python -m clients run`` then trains with it over the local and
the HTTP engine, as subprocesses: over HTTP the ``python -m server`` subprocess must import
the same paths itself, or it cannot build the model, draw the graph or account the noise.
No file of the framework is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(170)

REPO = Path(__file__).resolve().parents[2]

TASK = "mypkg.tasks:BreastCancer"
MECHANISM = "mypkg.extras:MySkellam"
GRAPH = "mypkg.extras:Everyone"

_TASKS_PY = '''
"""Logistic regression on the Wisconsin breast-cancer data (569 examples, 30 features)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from clients.tasks.base import Dataset, Task, compile_sgd, seeded_initializers


@functools.lru_cache(maxsize=1)
def _data() -> Dataset:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0,
                                              stratify=y)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-9
    return Dataset(((x_tr - mean) / std).astype(np.float32), y_tr.astype(np.int64),
                   ((x_te - mean) / std).astype(np.float32), y_te.astype(np.int64))


class BreastCancer(Task):
    name = "breast_cancer"
    input_shape = (30,)
    num_classes = 2
    class_names = ("malignant", "benign")
    description = "logistic regression on the breast-cancer data"

    def build_model(self, seed: int = 0):
        import tensorflow as tf

        init = seeded_initializers(seed)
        model = tf.keras.Sequential([tf.keras.layers.Input(self.input_shape),
                                     tf.keras.layers.Dense(2, kernel_initializer=init())])
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return compile_sgd(model, loss, metrics=["accuracy"])

    def load_data(self, data_dir: Path | str | None = None) -> Dataset:
        return _data()
'''

_EXTRAS_PY = '''
from dp.mechanisms import Skellam
from secagg.graph import CompleteGraph


class MySkellam(Skellam):
    name = "my_skellam"


class Everyone(CompleteGraph):
    name = "everyone"
'''

_ENTRY_POINTS = f"""
[secagg_dp.tasks]
bc_ep = {TASK}

[secagg_dp.mechanisms]
skellam_ep = {MECHANISM}

[secagg_dp.graphs]
everyone_ep = {GRAPH}
"""


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    pkg = root / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "tasks.py").write_text(textwrap.dedent(_TASKS_PY), encoding="utf-8")
    (pkg / "extras.py").write_text(textwrap.dedent(_EXTRAS_PY), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def installed_root(plugin_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only a dist-info declaring the entry points (the package itself is
    on PYTHONPATH through ``plugin_root``), as ``pip install`` would leave it."""
    root = tmp_path_factory.mktemp("site")
    dist = root / "mypkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n",
                                   encoding="utf-8")
    (dist / "entry_points.txt").write_text(_ENTRY_POINTS, encoding="utf-8")
    return root


def _run(args: list[str], cwd: Path, *paths: Path, timeout: float = 120) -> (
        subprocess.CompletedProcess[str]):
    pythonpath = os.pathsep.join([str(REPO), *map(str, paths)])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=pythonpath)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def _train(engine: str, task: str, mechanism: str, graph: str, tmp_path: Path,
           *paths: Path) -> list[dict[str, object]]:
    out = tmp_path / f"{engine}.json"
    proc = _run(
        ["-m", "clients", "run", "--engine", engine, "--task", task, "--mechanism", mechanism,
         "--graph", graph, "--clients", "6", "--per-round", "4", "--sampling", "fixed",
         "--rounds", "2", "--local-epochs", "2", "--lr", "0.1", "--noise-multiplier", "0.3",
         "--seed", "1", "--json-out", str(out), "--db", str(tmp_path / f"{engine}.sqlite3")],
        tmp_path, *paths,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["status"] for r in rows] == ["done", "done"], rows
    return rows


@pytest.mark.parametrize("engine", ["local", "http"])
def test_train_a_plugin_task_by_import_path(engine: str, plugin_root: Path,
                                            tmp_path: Path) -> None:
    rows = _train(engine, TASK, MECHANISM, GRAPH, tmp_path, plugin_root)
    for row in rows:
        assert row["mechanism"] == MECHANISM and row["graph"] == GRAPH
        assert row["degree"] is None  # drawn by the complete graph's rule, renamed
        assert isinstance(row["epsilon"], float) and 0 < row["epsilon"] < float("inf")
    # 143 held-out examples, two classes (63 % benign): training must beat the prior
    assert isinstance(rows[-1]["accuracy"], float) and rows[-1]["accuracy"] > 0.8


def test_bad_plugin_path_is_one_line_exit_2(plugin_root: Path, tmp_path: Path) -> None:
    for flag, value, says in (("--task", "nomodule_zz.x:Y", "cannot import"),
                              ("--mechanism", GRAPH, "NoiseMechanism")):
        proc = _run(["-m", "clients", "run", flag, value], tmp_path, plugin_root, timeout=60)
        assert proc.returncode == 2, (flag, value, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error" in lines[0] and says in lines[0], proc.stderr


def test_entry_points_are_listed_and_train(plugin_root: Path, installed_root: Path,
                                           tmp_path: Path) -> None:
    for args in (["-m", "clients", "run", "--help"], ["-m", "clients", "device", "--help"]):
        proc = _run(args, tmp_path, plugin_root, installed_root, timeout=60)
        assert proc.returncode == 0, proc.stderr
        text = " ".join(proc.stdout.split())
        assert "one of fashion, linreg, digits, bc_ep, or package.module:Class" in text
        if "run" in args:
            assert "one of ddgauss, skellam, gaussian, none, skellam_ep," in text
            assert "one of complete, harary, everyone_ep, or package.module:Class" in text
    proc = _run(["-m", "dp", "epsilon", "--help"], tmp_path, plugin_root, installed_root,
                timeout=60)
    assert "skellam_ep" in " ".join(proc.stdout.split())
    # without the dist-info nothing extra is listed
    proc = _run(["-m", "clients", "run", "--help"], tmp_path, plugin_root, timeout=60)
    assert "bc_ep" not in proc.stdout and "one of fashion, linreg, digits, or" in " ".join(
        proc.stdout.split())
    # listing does not import the plug-in; resolving a name does
    probe = ("import sys; from clients.tasks import TASKS, get_task; "
             "assert 'bc_ep' in TASKS.names() and 'mypkg.tasks' not in sys.modules; "
             "t = get_task('bc_ep'); print(type(t).__name__, t.name)")
    proc = _run(["-c", probe], tmp_path, plugin_root, installed_root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BreastCancer", "breast_cancer"]
    rows = _train("local", "bc_ep", "skellam_ep", "everyone_ep", tmp_path, plugin_root,
                  installed_root)
    assert rows[-1]["mechanism"] == "skellam_ep" and rows[-1]["graph"] == "everyone_ep"
