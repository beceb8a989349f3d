"""The documentation builds without a warning, covers the API, and its code runs.

- Every public name is in exactly one group of the API reference
  (``docs/_ext/generated.py``, ``API_GROUPS``), so it gets a page; every public
  function's docstring has an example (``WITHOUT_EXAMPLE`` lists the exceptions).
- Every ``{include}`` of README.md names section markers that exist there (the
  getting-started and L-BFGS pages show the README's own, tested, examples), and
  the included text has no relative link (it would break on the site).
- The site builds with Sphinx as README.md says (``-W -n``: a warning, a broken
  cross-reference or a docstring that does not parse is an error), with a page for
  every public name and the included README text on the pages.
- The Python blocks of every page run top to bottom, one namespace per page, as the
  README's do in ``tests/test_notebooks.py``; the docstrings' examples run as doctests
  (``--doctest-modules``).

Without xdist the build runs in a subprocess while the pages' code runs here, and
``test_docs_build_without_warnings`` (last) waits for it.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(
    p
    for p in DOCS.rglob("*.md")
    if "_generated" not in p.parts and "_build" not in p.parts
)
# The README sections the docs include, and the build command the README gives.
README_MARKERS = ("quickstart", "nnx", "lbfgs", "docs-build")
BUILD_COMMAND = 'pip install -e ".[docs]" && sphinx-build -W -n docs docs/_build/html'
INCLUDE = re.compile(r"```\{include\} (?P<path>\S+)\n(?P<options>(?::[\w-]+:.*\n)*)```")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def readme_includes() -> list[tuple[pathlib.Path, str, str]]:
    """``(page, start marker, end marker)`` of every include of README.md."""
    found = []
    for page in PAGES:
        for m in INCLUDE.finditer(page.read_text()):
            if (page.parent / m.group("path")).resolve() != README:
                continue
            opts = dict(re.findall(r":([\w-]+): (.*)", m.group("options")))
            found.append(
                (page, opts.get("start-after", ""), opts.get("end-before", ""))
            )
    return found


def readme_slice(start: str, end: str) -> str:
    text = README.read_text()
    return text.split(start, 1)[1].split(end, 1)[0]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The Sphinx build, started once, in a subprocess: ``(process, out, log)``."""
    out = tmp_path_factory.mktemp("docs")
    # As in a fresh clone: no generated pages from an earlier build.
    shutil.rmtree(DOCS / "_generated", ignore_errors=True)
    log = open(out / "sphinx.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-n",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc, out / "html", log
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def test_every_public_name_is_in_one_api_group():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import generated
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    import optax_invloss

    problems = generated.api_mismatch(list(optax_invloss.__all__))
    assert not problems, "docs/_ext/generated.py API_GROUPS: " + "; ".join(problems)


# Public functions whose docstring has no executed example yet (the API page of
# each other function shows one). Shrink it as examples are added.
WITHOUT_EXAMPLE: set[str] = set()


def test_every_public_function_has_an_example():
    import inspect

    import optax_invloss

    functions = [
        n
        for n in optax_invloss.__all__
        if inspect.isfunction(getattr(optax_invloss, n))
    ]
    missing = {
        n
        for n in functions
        if ">>> " not in (inspect.getdoc(getattr(optax_invloss, n)) or "")
    }
    assert missing == WITHOUT_EXAMPLE, (
        f"public functions without a doctest example: {sorted(missing)}; "
        f"tests/test_docs.py expects {sorted(WITHOUT_EXAMPLE)}"
    )


def test_readme_has_the_markers_the_docs_include():
    text = README.read_text()
    includes = readme_includes()
    assert {s for _, s, _ in includes} >= {
        f"<!-- start: {m} -->" for m in ("quickstart", "nnx", "lbfgs")
    }
    wanted = [
        (f"<!-- start: {m} -->", f"<!-- end: {m} -->", "test_docs.py")
        for m in README_MARKERS
    ]
    wanted += [(s, e, str(p.relative_to(ROOT))) for p, s, e in includes]
    for start, end, where in wanted:
        assert start.startswith("<!-- start: ") and end.startswith("<!-- end: "), (
            f"{where}: include README.md with :start-after: <!-- start: NAME --> and "
            f":end-before: <!-- end: NAME -->, got {start!r}, {end!r}"
        )
        for marker in (start, end):
            assert text.count(marker) == 1, (
                f"README.md must hold the line {marker} exactly once (it holds it "
                f"{text.count(marker)} times); {where} needs it"
            )
        assert text.index(start) < text.index(end), f"README.md: {start} after {end}"


def test_included_readme_text_has_no_relative_links():
    for page, start, end in readme_includes():
        links = re.findall(r"\]\(([^)]+)\)", readme_slice(start, end))
        relative = [u for u in links if not re.match(r"(https?:|mailto:|#)", u)]
        assert not relative, (
            f"{page.relative_to(ROOT)} includes README.md between {start} and {end}, "
            f"whose relative links {relative} break on the site: use absolute URLs"
        )


def test_readme_gives_the_build_command():
    section = readme_slice("<!-- start: docs-build -->", "<!-- end: docs-build -->")
    assert BUILD_COMMAND in section


def test_read_the_docs_builds_what_the_readme_builds():
    """The hosted build (.readthedocs.yaml) is the README's: the package with its
    docs extra, docs/conf.py, warnings as errors. Until the site is hosted,
    pyproject's Documentation link is the docs' source, as the README's is."""
    config = (ROOT / ".readthedocs.yaml").read_text()
    assert re.search(r"^\s+configuration: docs/conf\.py$", config, re.M), config
    assert re.search(r"^\s+fail_on_warning: true$", config, re.M), config
    assert re.search(r"extra_requirements:\s+- docs$", config, re.M), config
    assert "sphinx-build -W -n docs" in README.read_text()
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Documentation"] == f"{urls['Repository']}/blob/main/docs/index.md"
    assert f"[Documentation]({urls['Documentation']})" in README.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_python_blocks_run(page, request):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        request.getfixturevalue("build")  # the build runs meanwhile
    namespace: dict = {"__name__": "docs"}
    for i, block in enumerate(python_blocks(page.read_text())):
        exec(compile(block, f"{page.name} python block {i + 1}", "exec"), namespace)  # noqa: S102


def test_docs_build_without_warnings(build):
    proc, html, log = build
    returncode = proc.wait(timeout=600)
    log.seek(0)
    assert returncode == 0, log.read()[-8000:]
    import optax_invloss

    for name in optax_invloss.__all__:
        page = html / "_generated" / "api" / f"optax_invloss.{name}.html"
        assert page.exists(), f"no API page for optax_invloss.{name}"
    for page in PAGES:
        built = html / page.relative_to(DOCS).with_suffix(".html")
        assert built.exists(), f"{page.relative_to(DOCS)} was not built"

    # The included README examples are on the pages (an include that matched
    # nothing would be an empty section, not a warning).
    def text(path):
        return re.sub(r"<[^>]+>", "", (html / path).read_text())

    getting_started = text("getting_started.html")
    for needle in ("def loss_terms(params)", "nnx.Optimizer(", "eqx.filter_jit"):
        assert needle in getting_started, f"getting_started.html lacks {needle!r}"
    assert "optax_invloss.run_lbfgs(" in text("guides/lbfgs.html")
