"""The README's Python code, checked here; it runs in the notebooks' fresh
environment (``tests/test_notebooks.py::test_readme_runs_in_the_fresh_venv``),
where only the installed package and its declared dependencies are importable."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_compile():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4, "the README lost its code examples"
    for i, block in enumerate(blocks):
        compile(block, f"README.md python block {i + 1}", "exec")
