"""The README's "Python API" snippets, and the examples in the packages' module docstrings,
run as a user would paste them: each in a fresh interpreter, from an empty directory.

The snippets use small settings (digits, a few devices, two rounds, the local engine),
so that the whole file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Python API"
#: modules whose docstrings carry runnable examples (rendered by pdoc, `make docs`)
DOCSTRING_MODULES = ("secagg/__init__.py", "dp/__init__.py", "clients/api.py")
MAX_LINES = 20
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_snippets() -> list[str]:
    """The ```python blocks of the README's "## Python API" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    return _BLOCK.findall(text[start:end if end >= 0 else len(text)])


def docstring_snippets() -> list[tuple[str, str]]:
    """(module path, code) of the ```python blocks in the module docstrings."""
    out = []
    for rel in DOCSTRING_MODULES:
        doc = ast.get_docstring(ast.parse((REPO / rel).read_text(encoding="utf-8"))) or ""
        out += [(rel, code) for code in _BLOCK.findall(doc)]
    return out


def _cases() -> list[tuple[str, str]]:
    cases = [(f"README-{i + 1}", code) for i, code in enumerate(readme_snippets())]
    seen = {code for _, code in cases}
    for rel, code in docstring_snippets():
        if code not in seen:  # the same example twice runs once
            seen.add(code)
            cases.append((rel, code))
    return cases


CASES = _cases()


def test_the_readme_has_short_snippets() -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 3
    for code in snippets:
        assert len(code.strip().splitlines()) <= MAX_LINES, code
    assert any("from clients import Experiment" in code for code in snippets)
    assert {rel for rel, _ in docstring_snippets()} == set(DOCSTRING_MODULES)


@pytest.mark.parametrize("code", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_snippet_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip(), "a snippet prints what it shows"
