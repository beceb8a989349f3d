"""Timing primitives of the overhead benchmark: compiled chunks, A/B pairs, medians.

A :class:`Program` is one ``lax.scan`` chunk of training steps compiled ahead of
time, with what the compiler reports about it (compile time, temporary buffers,
matrix-product FLOPs). :func:`paired` times two programs alternately (A/B, B/A,
...) and :func:`summarise` turns the times into the judged ratio: the median over
the pairs of (method time / plain time).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optax_invloss as oil
from benchmarks._hlo import dot_stats

# Matrix products of fewer FLOPs are a method's arithmetic on its few loss values,
# not a pass through the network (the smallest network product here, a 50-wide
# layer on one point, is 100 FLOPs; with 128 points, 12 800).
MIN_FLOPS = 256


@dataclasses.dataclass
class Program:
    """One compiled chunk of training steps and its starting carry."""

    compiled: Any
    carry: Any
    compile_seconds: float
    temp_bytes: int | None
    flops: float  # static matrix-product FLOPs of the program, always run
    conditional_flops: float  # inside lax.cond branches (all branches added up)


def compile_chunk(step: Callable, carry: Any, keys: jax.Array) -> Program:
    """Lowers and compiles ``lax.scan(step)`` over ``keys``; times it."""
    chunk = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    start = time.perf_counter()
    compiled = chunk.lower(carry, keys).compile()
    seconds = time.perf_counter() - start
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        temp = None
    stats = dot_stats(compiled.as_text(), MIN_FLOPS)
    return Program(
        compiled=compiled,
        carry=carry,
        compile_seconds=seconds,
        temp_bytes=temp,
        flops=stats.flops,
        conditional_flops=stats.conditional_flops,
    )


def run(program: Program, keys: jax.Array, carry: Any = None) -> tuple[float, float]:
    """Runs one chunk; returns its (wall, process CPU) seconds."""
    carry = program.carry if carry is None else carry
    wall, cpu = time.perf_counter(), time.process_time()
    out = program.compiled(carry, keys)
    jax.block_until_ready(out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del out
    return wall, cpu


def paired(
    base: Program,
    other: Program,
    keys: jax.Array,
    repeats: int,
    other_carry: Any = None,
) -> dict:
    """Times ``base`` and ``other`` alternately (AB, BA, AB, ...); per-step seconds."""
    steps = keys.shape[0]
    times = {"base": [], "other": [], "base_cpu": [], "other_cpu": []}
    for i in range(repeats):
        order = ("base", "other") if i % 2 == 0 else ("other", "base")
        for which in order:
            if which == "base":
                wall, cpu = run(base, keys)
            else:
                wall, cpu = run(other, keys, other_carry)
            times[which].append(wall / steps)
            times[which + "_cpu"].append(cpu / steps)
    return times


def summarise(times: dict, clock: str = "wall") -> dict:
    """The median paired ratio, its spread, the ratio of medians, the step times.

    The judged ``ratio`` is the median over the A/B pairs of (method time / plain
    time): the two halves of a pair run back to back, so a change of the
    machine's speed between pairs (another job starting on a shared CPU) cancels
    in each pair's ratio, where it does not in the ratio of the two medians
    (``ratio_of_medians``, also kept).

    ``clock``: the clock the judged ``ratio`` and the times are read from,
    ``"wall"`` (elapsed time) or ``"cpu"`` (the process's CPU time, which does
    not count the time the process waits for a core other processes hold).
    """
    suffix = "" if clock == "wall" else "_cpu"
    base = np.asarray(times["base" + suffix])
    other = np.asarray(times["other" + suffix])
    pairs = other / base
    ratio = lambda key: float(
        np.median(np.asarray(times["other" + key]) / np.asarray(times["base" + key]))
    )
    return {
        "ratio": float(np.median(pairs)),
        "ratio_of_medians": float(np.median(other) / np.median(base)),
        "pair_ratios": [float(r) for r in pairs],
        "clock": clock,
        "pair_q25": float(np.quantile(pairs, 0.25)),
        "pair_q75": float(np.quantile(pairs, 0.75)),
        "pair_min": float(pairs.min()),
        "pair_max": float(pairs.max()),
        "ratio_wall": ratio(""),
        "ratio_cpu_time": ratio("_cpu"),
        "base_ms": float(np.median(base) * 1e3),
        "method_ms": float(np.median(other) * 1e3),
        "base_ms_q25_q75": [float(np.quantile(base, q) * 1e3) for q in (0.25, 0.75)],
        "repeats": len(base),
    }


def memory_available(program: Program) -> tuple[bool, str]:
    """Whether the program's temporary buffers fit in free memory now."""
    if program.temp_bytes is None:
        return True, ""
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:
        free = _host_available_bytes()
    if free is not None and program.temp_bytes > 0.8 * free:
        return False, (
            f"not run: needs {program.temp_bytes / 2**30:.1f} GiB of temporary "
            f"buffers, {free / 2**30:.1f} GiB free"
        )
    return True, ""


def _host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_device_bytes() -> int | None:
    """The device's peak memory in use so far (process-wide), if reported."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def update_cost_us(
    method: oil.WeightingMethod,
    example: Any,
    steps: int = 2000,
    repeats: int = 15,
    clock: str = "wall",
) -> float:
    """Microseconds per step that ``method.update`` and the weighted sum add.

    Timed alone, in a ``lax.scan`` over ``steps`` made-up losses that change every
    step, against the same scan that only sums the losses (A/B, medians): the cost
    the A/B ratio of whole steps cannot resolve. For loss-value methods.
    """
    leaves, treedef = jax.tree.flatten(example)
    start = jax.tree.unflatten(
        treedef, [jnp.asarray(1.0 + i, leaf.dtype) for i, leaf in enumerate(leaves)]
    )
    scales = jnp.linspace(0.5, 2.0, steps, dtype=leaves[0].dtype)

    def weighted(state, scale):
        losses = jax.tree.map(lambda x: x * scale, start)
        weights, state = method.update(losses, state)
        return state, oil.weighted_sum(losses, weights)

    def plain(state, scale):
        losses = jax.tree.map(lambda x: x * scale, start)
        return state, sum(jax.tree.leaves(losses))

    state = method.init(start)
    programs = [
        jax.jit(lambda s, xs, f=f: jax.lax.scan(f, s, xs))
        .lower(state, scales)
        .compile()
        for f in (plain, weighted)
    ]
    times = [[], []]
    for i in range(repeats):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            now = time.perf_counter if clock == "wall" else time.process_time
            begin = now()
            jax.block_until_ready(programs[j](state, scales))
            times[j].append(now() - begin)
    return float((np.median(times[1]) - np.median(times[0])) / steps * 1e6)
