"""The notebooks are Colab-ready, and run from a fresh environment.

Static checks: one repository address (pyproject's ``[project.urls]``) in every
badge, install cell and link, no placeholder, shell lines that a shell reads as
written, and imports that the installed distribution provides.

In a fresh virtual environment (no system site packages) where ``optax_invloss``
is not importable, holding what a Colab runtime preinstalls (jax, optax, flax,
matplotlib, a Jupyter kernel), the notebooks' install cell (the same in every
notebook) installs the package from this clone through ``OPTAX_INVLOSS_SOURCE``;
then every notebook runs there, from a scratch directory, at the suite's small step
count (``OPTAX_INVLOSS_STEPS``, set by the root conftest.py). This replaces running
the notebooks in the test environment itself. The environment is built once per
test session and shared by the xdist workers (a file lock).
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import nbformat
import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
URLS = PYPROJECT["project"]["urls"]
REPO = URLS["Repository"]
SLUG = REPO.removeprefix("https://github.com/")  # owner/name
VENV_KERNEL = "optax-invloss-fresh-venv"


def read(path: pathlib.Path):
    return nbformat.read(path, as_version=4)


def code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def python_only(source: str) -> str:
    """A code cell without its IPython magics and shell lines."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line
        for line in source.splitlines()
    )


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


def test_project_urls_share_one_address():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPO), REPO
    for key in ("Homepage", "Repository", "Documentation", "Issues", "Changelog"):
        assert URLS[key].startswith(REPO), (key, URLS[key])


@pytest.mark.parametrize(
    "path",
    [*NOTEBOOKS, ROOT / "README.md", ROOT / "pyproject.toml"],
    ids=lambda p: p.name,
)
def test_no_placeholder_and_one_address(path):
    text = path.read_text()
    assert not re.search(r"github\.com/<", text), "a placeholder owner"
    urls = re.findall(r"https?://[^\s)\"'\]\\]+", text)
    for url in urls:
        assert "<" not in url and ">" not in url and "{" not in url, url
    # Every address of this project, on GitHub or through Colab, is pyproject's.
    for owner_name in re.findall(
        r"github\.com/(?:github/)?([^/\s]+/optax_invloss)", text
    ):
        assert owner_name == SLUG, (path.name, owner_name, SLUG)
    for url in urls:
        if "colab.research.google.com/github/" in url:
            assert url.startswith(f"https://colab.research.google.com/github/{SLUG}/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_opens_this_notebook(path):
    title = read(path).cells[0]
    badge = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/{path.name}"
    assert title.cell_type == "markdown" and f"({badge})" in title.source


def test_install_cells_are_one_cell_from_the_declared_address():
    firsts = {path.name: code_cells(read(path))[0] for path in NOTEBOOKS}
    first = next(iter(firsts.values()))
    assert all(cell == first for cell in firsts.values()), "install cells differ"
    for path in NOTEBOOKS:  # it is the first cell after the title
        assert read(path).cells[1].source == first, path.name
    assert "OPTAX_INVLOSS_SOURCE" in first
    assert f'"git+{REPO}"' in first
    assert re.search(
        r'%pip install -q "optax_invloss\[notebooks\] @ \{SOURCE\}"', first
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_shell_lines_have_no_redirections(path):
    # A clone line with an angle-bracket placeholder owner is a valid shell line:
    # the shell reads it as a redirection.
    for cell in code_cells(read(path)):
        for line in cell.splitlines():
            if line.lstrip().startswith("!"):
                lexer = shlex.shlex(
                    line.lstrip()[1:], posix=True, punctuation_chars=True
                )
                tokens = list(lexer)
                assert not {"<", ">", ">>", "|", ";", "&"} & set(tokens), line


def _allowed_modules() -> set[str]:
    declared = PYPROJECT["project"]["dependencies"]
    declared += PYPROJECT["project"]["optional-dependencies"]["notebooks"]
    names = {re.split(r"[\[<>=! ;]", spec, maxsplit=1)[0] for spec in declared}
    # IPython: every Jupyter kernel (Colab's too) has it.
    return names | {"optax_invloss", "IPython"} | set(sys.stdlib_module_names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_only_the_installed_distribution(path):
    allowed = _allowed_modules()
    for cell in code_cells(read(path)):
        for node in ast.walk(ast.parse(python_only(cell))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in allowed, (path.name, module)


def test_readme_links_work_outside_the_repository():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        assert target.startswith(("https://", "#")), target
        if target.startswith(REPO + "/blob/main/"):
            path = target.removeprefix(REPO + "/blob/main/").partition("#")[0]
            assert (ROOT / path).exists(), target


# -- the fresh environment ---------------------------------------------------------

RUNNER = """\
import sys
import nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(
    nb,
    timeout=900,
    kernel_name=sys.argv[3],
    resources={"metadata": {"path": sys.argv[2]}},
).execute()
nbformat.write(nb, sys.argv[4])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the clone must not be importable there
    env.pop("XLA_FLAGS", None)  # this suite's 8 CPU devices (tests/conftest.py)
    env.pop("VIRTUAL_ENV", None)
    env["OPTAX_INVLOSS_SOURCE"] = ROOT.as_uri()
    env.setdefault("OPTAX_INVLOSS_STEPS", "100")
    return env


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=_env(), **kwargs)
    if result.returncode:
        pytest.fail(
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def _execute(venv: pathlib.Path, notebook: pathlib.Path, cwd: pathlib.Path):
    """Runs ``notebook`` in the fresh environment's kernel; returns it executed."""
    out = cwd / f"executed-{notebook.name}"
    _run(
        [venv / "bin" / "python", venv / "runner.py", notebook, cwd, VENV_KERNEL, out],
        cwd=cwd,
        timeout=1200,
    )
    return read(out)


def _colab_preinstalled() -> list[str]:
    """What a Colab runtime already has: the package's declared dependencies and
    its ``notebooks`` extra (jax, optax, flax, matplotlib), and a Jupyter kernel."""
    project = PYPROJECT["project"]
    extra = project["optional-dependencies"]["notebooks"]
    return [*project["dependencies"], *extra, "ipykernel", "nbclient"]


def _install(python: pathlib.Path, *requirements: str) -> None:
    """Installs ``requirements`` into the fresh environment, with uv if it is
    there (it links from its cache), else with pip."""
    uv = shutil.which("uv")
    if uv is not None:
        args = [uv, "pip", "install", "-q", "--python", python, *requirements]
        result = subprocess.run(
            args, capture_output=True, text=True, env=_env(), timeout=900
        )
        if result.returncode == 0:
            return
        print(f"uv failed, falling back to pip:\n{result.stderr[-2000:]}")
    _run([python, "-m", "pip", "install", "-q", *requirements], timeout=900)


def _preinstall(python: pathlib.Path) -> None:
    """Installs :func:`_colab_preinstalled` into the fresh environment.

    With uv when it is there (seconds instead of pip's minute and a half for jax
    and flax). Either way the install cell then resolves these as satisfied and
    installs the package itself.
    """
    _install(python, *_colab_preinstalled())


def _build(venv: pathlib.Path, scratch: pathlib.Path) -> dict:
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _preinstall(python)
    _run(
        [python, "-m", "ipykernel", "install", "--prefix", venv, "--name", VENV_KERNEL]
    )
    (venv / "runner.py").write_text(RUNNER)
    before = subprocess.run(  # from the scratch directory: not from the clone
        [python, "-c", "import jax, optax_invloss"],
        env=_env(),
        capture_output=True,
        cwd=scratch,
    )
    assert before.returncode != 0 and b"No module named 'optax_invloss'" in (
        before.stderr
    ), before.stderr.decode()[-2000:]
    # The install cell (the same in every notebook), then what it installed.
    check = nbformat.v4.new_notebook()
    check.cells = [
        nbformat.v4.new_code_cell(code_cells(read(NOTEBOOKS[0]))[0]),
        nbformat.v4.new_code_cell(
            "import importlib.metadata, json, pathlib, sys\n"
            "import optax_invloss\n"
            "files = [str(f) for f in importlib.metadata.files('optax_invloss')]\n"
            "print(json.dumps(dict(prefix=sys.prefix, file=optax_invloss.__file__,\n"
            "    version=optax_invloss.__version__, files=files)))"
        ),
    ]
    check_path = scratch / "install_check.ipynb"
    nbformat.write(check, check_path)
    executed = _execute(venv, check_path, scratch)
    install_output = "".join(o.get("text", "") for o in executed.cells[0].outputs)
    # The README's Equinox section needs Equinox, which the package does not
    # declare: a user installs it (`pip install equinox`).
    _install(python, "equinox")
    info = json.loads(executed.cells[1].outputs[0]["text"])
    info["install_output"] = install_output
    return info


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this session's workers
    venv, ready = base / "notebook-venv", base / "notebook-venv.json"
    with open(base / "notebook-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            scratch = base / "notebook-install-check"
            scratch.mkdir(exist_ok=True)
            ready.write_text(json.dumps(_build(venv, scratch)))
    return venv, json.loads(ready.read_text())


def test_install_cell_installs_from_the_clone_in_a_fresh_venv(fresh_venv):
    venv, info = fresh_venv
    assert pathlib.Path(info["prefix"]) == venv
    installed = pathlib.Path(info["file"])
    assert venv in installed.parents and ROOT not in installed.parents, installed
    assert info["version"] == PYPROJECT["project"]["version"]
    files = info["files"]
    assert any(f.endswith("licenses/LICENSE") for f in files), files
    assert "optax_invloss/py.typed" in files


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_the_fresh_venv(path, fresh_venv, tmp_path):
    venv, _ = fresh_venv
    executed = _execute(venv, path, tmp_path)
    install = executed.cells[1]
    assert not install.outputs, install.outputs  # installed: the cell did nothing
    errors = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors


def test_readme_runs_in_the_fresh_venv(fresh_venv, tmp_path):
    # The README's Python blocks, top to bottom in one script, as a new user runs
    # them: the package from the clone's build with its declared dependencies
    # (and Equinox for its section), default JAX settings, from a scratch folder.
    venv, _ = fresh_venv
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 4, "the README lost its code examples"
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks))
    _run([venv / "bin" / "python", script], cwd=tmp_path, timeout=900)
