"""The API reference (pdoc) builds for every package with no warning.

``make docs`` runs this module as a script (``python -m tests.test_docs OUT``); the test
runs the same build in a subprocess into a temporary directory, so CI (``make test``)
fails on a docstring reference pdoc cannot resolve, a name in ``__all__`` that does not
exist, an annotation it cannot evaluate, or a module that no longer imports.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the packages with reference pages (benchmarks and tests are scripts, not an API)
PACKAGES = ("secagg", "dp", "server", "clients")


def _is_ours(filename: str) -> bool:
    """A warning raised by pdoc itself or by this project's code (not a third party's
    import-time deprecation notice)."""
    path = Path(filename).resolve()
    import pdoc

    return (Path(pdoc.__file__).resolve().parent in path.parents
            or (REPO in path.parents and ".venv" not in path.parts))


def module_names() -> list[str]:
    """The packages and their public submodules (no ``__main__``: the command lines
    document themselves with ``--help``; no ``_private`` modules)."""
    import pkgutil

    names: list[str] = []
    for name in PACKAGES:
        names.append(name)
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            parts = info.name.split(".")
            if not any(p.startswith("_") for p in parts):
                names.append(info.name)
    return names


def build_docs(out_dir: Path) -> list[str]:
    """Write the HTML reference of :data:`PACKAGES` to ``out_dir``; the warnings raised
    on the way (empty when the build is clean)."""
    # pdoc blocks subprocesses during imports; joblib (via scikit-learn) probes the CPU
    # count with one at import time, which is harmless
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import pdoc
    import pdoc.doc
    import pdoc.render

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in PACKAGES:
            # resolve the packages' lazily imported names (``server.create_app``,
            # ``clients.Experiment``) so that pdoc documents them where they are exported
            module = importlib.import_module(name)
            for attr in getattr(module, "__all__", ()):
                setattr(module, attr, getattr(module, attr))
        pdoc.render.configure(docformat="restructuredtext", show_source=True,
                              footer_text="secagg-dp")
        # every public module gets a page, whatever the packages' __all__ list (pdoc
        # itself would follow __all__ and skip the submodules); pdoc.pdoc's loop otherwise
        modules = {name: pdoc.doc.Module.from_name(name) for name in module_names()}
        for module in modules.values():
            page = out_dir / f"{module.fullname.replace('.', '/')}.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(pdoc.render.html_module(module, modules), encoding="utf-8")
        (out_dir / "index.html").write_text(pdoc.render.html_index(modules), encoding="utf-8")
        (out_dir / "search.js").write_text(pdoc.render.search_index(modules), encoding="utf-8")
    return [f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"
            for w in caught if _is_ours(w.filename)]


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "tests.test_docs", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for name in PACKAGES:
        assert (out / f"{name}.html").is_file(), name
    # the Python API's entry points have pages of their own
    for page in ("clients/api.html", "clients/plan.html", "secagg/runner.html",
                 "dp/accounting.html"):
        assert (out / page).is_file(), page
    assert "Experiment" in (out / "clients.html").read_text(encoding="utf-8")


def main(argv: list[str]) -> int:
    """``python -m tests.test_docs OUT``: build, print the warnings, exit 1 if any."""
    if len(argv) != 1:
        print("usage: python -m tests.test_docs OUTPUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    problems = build_docs(out)
    for line in problems:
        print(f"docs: warning: {line}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} warning(s); the reference must build cleanly",
              file=sys.stderr)
        return 1
    print(f"docs: API reference of {', '.join(PACKAGES)} written to {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
