"""The documentation builds without a warning, and its code runs.

The site is built with Sphinx exactly as README.md says (warnings are errors, and
``-n`` makes every unresolved cross-reference one), so a broken reference, a
docstring that does not parse or a missing page fails here. The guides' Python
blocks run top to bottom, one namespace per page, as the README's do in
``tests/test_readme.py``; the docstrings' examples run as doctests
(``--doctest-modules``).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_generated" not in p.parts
               and "_build" not in p.parts)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q",
         "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
         str(tmp_path / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    html = tmp_path / "html"
    import optax_invloss

    for name in optax_invloss.__all__:
        page = html / "_generated" / "api" / f"optax_invloss.{name}.html"
        assert page.exists(), f"no API page for optax_invloss.{name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_python_blocks_run(page):
    namespace: dict = {"__name__": "docs"}
    for i, block in enumerate(python_blocks(page.read_text())):
        exec(compile(block, f"{page.name} python block {i + 1}", "exec"), namespace)  # noqa: S102
