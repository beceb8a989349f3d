"""The declared dependency floors install together and work.

A fresh virtual environment (no system site packages) gets exactly the minimum
versions of pyproject's runtime dependencies (tests/floors.txt), the package from
this clone without dependencies, and a quick subset of the suite run from a scratch
copy of tests/ (so that it imports the installed package, not the clone): the Optax
wrapper's tests, and the contract and sharding suites (``jax.shard_map``, ``jax.P``,
``reshard``) for one method whose numerics use the most of jax.numpy (SoftAdapt:
slopes scaled by powers of two, a guarded softmax). numpy 1.26's scalar promotion
differs from numpy 2's; this check found one place where it mattered. Then the
floor of the ``flax`` extra (tests/floors-flax.txt: flax 0.12.7, which itself
needs jax >= 0.10.0) goes in over them, for one NNX test.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOORS = ROOT / "tests" / "floors.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FLAX_FLOOR = "0.12.7"  # pyproject's `flax` extra; tests/floors-flax.txt pins it


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in FLOORS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_floors_file_pins_every_declared_floor():
    def release(version: str) -> tuple[int, ...]:  # "1.26" and "1.26.0" agree
        parts = [int(p) for p in version.split(".")]
        while parts and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    declared = {}
    for spec in PROJECT["dependencies"]:
        name, floor = re.fullmatch(r"([\w.-]+)>=([\w.]+)", spec).groups()
        declared[name] = release(floor)
    pinned = {name: release(pin) for name, pin in _pins().items()}
    assert pinned == declared
    assert PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["optional-dependencies"]["flax"][0] == f"flax>={FLAX_FLOOR}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def _run(args, **kwargs):
    result = subprocess.run(
        args, capture_output=True, text=True, env=_env(), timeout=900, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def _install(python: pathlib.Path, *args) -> None:
    uv = shutil.which("uv")
    if uv is not None:
        _run([uv, "pip", "install", "-q", "--python", python, *args])
    else:
        _run([python, "-m", "pip", "install", "-q", *args])


def test_the_suite_passes_on_the_declared_floors(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _install(python, "-r", FLOORS, "pytest>=8", "hypothesis>=6", "chex>=0.1.87")
    _install(python, "--no-deps", ROOT)
    versions = _run(
        [
            python,
            "-c",
            "import jax, optax, numpy as np; "
            "print(jax.__version__, optax.__version__, np.__version__)",
        ],
        cwd=tmp_path,
    ).stdout.split()
    pins = _pins()
    assert versions == [pins["jax"], pins["optax"], pins["numpy"]], versions
    shutil.copytree(ROOT / "tests", tmp_path / "tests")
    pytest_args = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    pytest_args += ["-c", os.devnull, "--rootdir", tmp_path]
    wrapper = _run([*pytest_args, "tests/test_optax.py"], cwd=tmp_path)
    one_method = _run(
        [
            *pytest_args,
            "tests/test_contract.py",
            "tests/test_sharding.py",
            "-k",
            "softadapt_beta10 and not flax and not lbfgs",
        ],
        cwd=tmp_path,
    )
    # The `flax` extra's floor over the core floors: NNX with a gradient-based
    # method and with a loss-value method.
    _install(python, "-r", ROOT / "tests" / "floors-flax.txt")
    flax_version = _run(
        [python, "-c", "import flax; print(flax.__version__)"], cwd=tmp_path
    ).stdout.strip()
    assert flax_version == FLAX_FLOOR, flax_version
    nnx = _run(
        [
            *pytest_args,
            "tests/test_nnx.py",
            "-k",
            "gradient_methods_take_functions_of_the_model and lr_annealing",
        ],
        cwd=tmp_path,
    )
    for result, least in ((wrapper, 5), (one_method, 10), (nnx, 1)):
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed and int(passed.group(1)) >= least, result.stdout[-2000:]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-n", "0", "-q"]))
