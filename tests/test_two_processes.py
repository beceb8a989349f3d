"""Two JAX processes on this machine give the weights and parameters of one.

Starts ``tests/_two_processes.py`` twice, as processes 0 and 1 of one
``jax.distributed.initialize`` run on localhost (CPU collectives over gloo),
each holding half of the batch and one CPU device. Both train ``inverse_loss``
(with an EMA) and ``lr_annealing`` (a gradient-based method, updating every
step) for a few steps, inside ``jax.shard_map`` with ``optax_invloss.sharded``
and under plain ``jax.jit`` with a global array, and must reproduce the weights
and parameters after every step of one process that holds the whole batch.
If the installed jaxlib cannot run CPU collectives, the test is skipped with the
reason the worker printed.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from _two_processes import METHODS, NO_COLLECTIVES_EXIT, STEPS, train_one_process

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "_two_processes.py"
TIMEOUT_S = 240  # the two processes together; about 10 s on an idle 2-core CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # One CPU device per process (tests/conftest.py asks for 8 in this one), this
    # checkout's package first on the path.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")]
    )
    return env


def _start_two_processes(tmp_path):
    """Processes 0 and 1 of one distributed run, output to files in ``tmp_path``."""
    address = f"localhost:{_free_port()}"
    procs = []
    for i in range(2):
        with (
            open(tmp_path / f"out{i}.txt", "w") as out,
            open(tmp_path / f"err{i}.txt", "w") as err,
        ):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(WORKER),
                        address,
                        str(i),
                        str(tmp_path / f"process{i}.npz"),
                    ],
                    env=_worker_env(),
                    cwd=HERE.parent,
                    stdout=out,
                    stderr=err,
                )
            )
    return procs


def _results(procs, tmp_path) -> list[dict[str, np.ndarray]]:
    """Each process's results; fails with both stderrs, or skips without collectives."""
    try:
        for proc in procs:
            proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(
            f"the two processes ran past {TIMEOUT_S} s:\n" + _show(procs, tmp_path)
        )
    outs = [(tmp_path / f"out{i}.txt").read_text() for i in range(2)]
    reasons = [
        line
        for proc, out in zip(procs, outs, strict=True)
        if proc.returncode == NO_COLLECTIVES_EXIT
        for line in out.splitlines()
        if line.startswith("NO_CPU_COLLECTIVES:")
    ]
    if reasons:
        pytest.skip(
            f"this jaxlib cannot run CPU collectives across processes: {reasons[0]}"
        )
    if any(proc.returncode != 0 for proc in procs):
        pytest.fail("a worker process failed:\n" + _show(procs, tmp_path))
    return [dict(np.load(tmp_path / f"process{i}.npz")) for i in range(2)]


def _show(procs, tmp_path) -> str:
    return "\n".join(
        f"--- process {i}: exit {proc.returncode}\n"
        f"stdout:\n{(tmp_path / f'out{i}.txt').read_text()}\n"
        f"stderr:\n{(tmp_path / f'err{i}.txt').read_text()}"
        for i, proc in enumerate(procs)
    )


def test_two_processes_match_one(tmp_path):
    procs = _start_two_processes(tmp_path)
    # The reference (one process, the whole batch) while the two processes run.
    reference = train_one_process()
    results = _results(procs, tmp_path)
    assert sorted(reference) == sorted(
        f"{name}/{key}"
        for name in METHODS
        for key in ("weight_pde", "weight_bc", "w", "b")
    )
    for name in METHODS:
        # The weights move: the check would miss a method that ignores the losses.
        bc = reference[f"{name}/weight_bc"]
        assert not np.allclose(bc[0], bc[-1])
    for path in ("shard_map", "jit"):
        for key, expected in reference.items():
            assert expected.shape[0] == STEPS
            for process, result in enumerate(results):
                np.testing.assert_allclose(
                    result[f"{path}/{key}"],
                    expected,
                    rtol=1e-10,
                    atol=1e-13,
                    err_msg=f"{path}, {key}, process {process}",
                )
