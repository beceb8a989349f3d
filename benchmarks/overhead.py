"""Cost per step of every weighting method, against the same step with the plain sum.

For each method, the ratio of the median time of the training step of
``benchmarks/train.py`` (one forward and one backward pass; the weights in the
optimizer state; :func:`optax_invloss.with_weighting` updating them) to the median
time of the same step with the plain sum of the losses and the bare optimizer. Both
run as jitted ``lax.scan`` chunks of steps (compilation excluded, timed apart),
side by side in one process, alternating A/B and B/A over several repeats from the
same starting state, each run ended by ``jax.block_until_ready``.

Loss-value methods add a few scalar operations and must cost nothing measurable.
Gradient-based methods (keyword inputs ``params``, ``loss_fn``, ``residual_fn``)
cost extra passes on update steps only: they are measured with ``update_every`` K
in 1, 10, 100, 1000. A K that divides the chunk is measured directly (K / chunk
updates in each timed chunk); a larger K is reported as the amortised cost
``r0 + (c - r0) / K`` from two measured ratios: ``c`` (K = 1, an update every step)
and ``r0`` (a chunk with no update step). The per-term gradients computed directly,
``jax.jacrev`` of the loss dict on top of the plain step, are measured in the same
run as the reference for ``c``. NTK trace weights need one Jacobian row per point,
not one gradient per term: their reference is those rows computed directly
(``jax.vmap`` over each term's points of ``jax.grad`` of its residual); they get
``residual_fn(params, points)`` and ``points``, as the README teaches.

Targets (medians, side by side): loss-value methods ratio <= 1.03 on the small size
and <= 1.01 on the large one; gradient-based ratio <= 1 + (c - 1) / K + 0.02 (so
<= 1.02 on a step with no update), and ``c <= 1.25 * r_jacrev``. A row that misses
is measured again with twice the repeats before it is reported.

Also reported, per row: compile time (``lower`` + ``compile``), the compiled
program's temporary buffer size (``compiled.memory_analysis()``), peak device
memory where the backend reports it (``device.memory_stats()``: GPU, not CPU), and
the matrix-product FLOPs per step of the compiled program, split into those that
always run and those inside a ``lax.cond`` branch (``benchmarks/_hlo.py``).

Run (``--quick``: the small size only, shorter)::

  python -m benchmarks.overhead
  python -m benchmarks.overhead --quick
  python -m benchmarks.overhead --clock cpu  # a CPU shared with other jobs

On a CPU that other jobs share, elapsed time measures the scheduler as much as the
step: ``--clock cpu`` judges by the process's CPU time instead (both are reported).
A row whose update is slow gets fewer pairs or a shorter chunk (``row_seconds``);
one predicted to take far longer is reported from its FLOPs, not run.

It writes ``benchmarks/results/overhead_<backend>.json`` and ``.md`` (``cpu`` or
``gpu``), with the machine, versions, date and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks._hlo import dot_stats
from benchmarks.problems import MLP, get_problem
from benchmarks.train import weighted_step

LOSS_VALUE_METHODS = (
    "inverse_loss",
    "static_weights",
    "softadapt",
    "relobralo",
    "uncertainty_weighting",
    "dwa",
)
GRADIENT_METHODS = ("lr_annealing", "grad_norm_balance", "ntk_weights", "gradnorm")
GRADIENT_INPUTS = frozenset({"params", "loss_fn", "residual_fn"})
EVERY = (1, 10, 100, 1000)
PROBLEMS = ("helmholtz", "helmholtz5")
# Matrix products of fewer FLOPs are a method's arithmetic on its few loss values,
# not a pass through the network (the smallest network product here, a 50-wide
# layer on one point, is 100 FLOPs; with 128 points, 12 800).
MIN_FLOPS = 256
JACREV = "jacrev (per-term grads)"
PER_TERM = "grad of each term (loop)"
PER_POINT = "per-point Jacobian (vmap of grad)"
# Gradient-based methods whose K = 1 cost is judged against another reference
# than JACREV: NTK weights need one Jacobian row per point, not one per term.
REFERENCES = {"ntk_weights": PER_POINT}


@dataclasses.dataclass(frozen=True)
class Size:
    """One network and batch size, and how long to time it.

    Attributes:
      name: ``"small"`` or ``"large"``.
      layers: MLP widths, input first.
      points: collocation points per loss term.
      chunk: steps per timed ``lax.scan`` call.
      repeats: A/B pairs per row, at most.
      target: the loss-value methods' ratio target at this size.
      row_seconds: time for one row's pairs; a row whose chunks are slow (an
        update on every step of an expensive method) gets fewer pairs, at
        least ``MIN_REPEATS``.
    """

    name: str
    layers: tuple[int, ...]
    points: int
    chunk: int
    repeats: int
    target: float
    row_seconds: float = 60.0


MIN_REPEATS = 3
SIZES = {
    "small": Size("small", (2, 50, 50, 50, 1), 128, 100, 8, 1.03, row_seconds=40.0),
    "large": Size(
        "large", (2, 256, 256, 256, 256, 1), 8192, 1, 3, 1.01, row_seconds=60.0
    ),
}
QUICK = {
    "small": dataclasses.replace(SIZES["small"], chunk=50, repeats=5, row_seconds=15.0)
}


# ----------------------------------------------------------------------------------
# The training steps: plain sum, with a method (benchmarks/train.py), with jacrev.


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark problem at one size: everything a training step needs."""

    params: Any
    loss_fn: Callable  # (params, batch) -> {term: scalar}
    residual_fn: Callable  # (params, batch) -> {term: (N,)}
    sample: Callable  # key -> batch
    optimizer: optax.GradientTransformation


def per_term(batch: dict, points: int) -> dict:
    """Each term's points thinned by a stride to at most ``points``.

    ``helmholtz`` draws ``points`` on each side of the square for ``"bc"``; every
    fourth of them keeps ``points / 4`` per side, ``points`` in all.
    """
    return {k: v[:: max(1, v.shape[0] // points)][:points] for k, v in batch.items()}


def make_task(problem_name: str, size: Size, seed: int = 0) -> Task:
    problem = get_problem(problem_name)
    graphdef, params = nnx.split(MLP(size.layers, rngs=nnx.Rngs(seed)))
    apply_fn = lambda p: nnx.merge(graphdef, p)
    return Task(
        params=params,
        loss_fn=lambda p, batch: problem.loss_terms(apply_fn(p), batch),
        residual_fn=lambda p, batch: problem.residuals(apply_fn(p), batch),
        sample=lambda key: per_term(problem.sample(key, size.points), size.points),
        optimizer=problem.preset("quick").make_optimizer(),
    )


def _plain_update(task: Task, params, opt_state, batch):
    def total(params):
        losses = task.loss_fn(params, batch)
        return sum(jax.tree.leaves(losses)), losses

    (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
    updates, opt_state = task.optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses


def plain_step(task: Task) -> tuple[Callable, Any]:
    """The baseline: the same step with the plain sum and the bare optimizer."""

    def step(carry, key):
        params, opt_state = carry
        batch = task.sample(key)
        params, opt_state, losses = _plain_update(task, params, opt_state, batch)
        return (params, opt_state), losses

    return step, (task.params, task.optimizer.init(task.params))


def method_step(task: Task, method: oil.WeightingMethod) -> tuple[Callable, Any]:
    """The training step of ``benchmarks/train.py`` with ``method``."""
    example = jax.eval_shape(task.loss_fn, task.params, task.sample(jax.random.key(0)))
    tx = oil.with_weighting(task.optimizer, method, losses=example)
    step = weighted_step(tx, task.loss_fn, task.residual_fn, task.sample)
    return step, (task.params, tx.init(task.params))


def _reference_step(task: Task, per_term_grads: Callable) -> tuple[Callable, Any]:
    """The plain step plus ``per_term_grads(task, batch, params)``.

    The gradients are computed inside a ``lax.cond`` branch (taken on every step:
    its predicate is that the losses are finite), as a method computes them: apart
    from the step's own backward pass. Outside a branch, with the plain sum and
    terms on their own points, XLA would find each term's gradient inside the
    plain step's backward pass and share it, which no method can do. Their norms
    are returned, so that none of the work can be dropped.
    """

    def step(carry, key):
        params, opt_state = carry
        batch = task.sample(key)
        new_params, opt_state, losses = _plain_update(task, params, opt_state, batch)

        def norms():
            grads = per_term_grads(task, batch, params)
            return {term: optax.tree.norm(g) for term, g in grads.items()}

        finite = jnp.all(jnp.isfinite(jnp.stack(jax.tree.leaves(losses))))
        zeros = lambda: jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(norms)
        )
        return (new_params, opt_state), (losses, jax.lax.cond(finite, norms, zeros))

    return step, (task.params, task.optimizer.init(task.params))


def jacrev_step(task: Task) -> tuple[Callable, Any]:
    """The plain step plus the per-term gradients by ``jax.jacrev`` of the loss dict.

    The reference for a gradient-based method's cost at ``update_every = 1``.
    """
    return _reference_step(
        task, lambda task, batch, p: jax.jacrev(task.loss_fn)(p, batch)
    )


def _grad_of_each_term(task: Task, batch: Any, params: Any) -> dict:
    loss_fn = lambda p: task.loss_fn(p, batch)
    terms = jax.eval_shape(loss_fn, params)
    return {
        term: jax.grad(lambda p, term=term: loss_fn(p)[term])(params) for term in terms
    }


def _per_point_rows(task: Task, batch: Any, params: Any) -> dict:
    """Each term's Jacobian rows: ``jax.vmap`` over its points of ``jax.grad``."""

    def rows(term, points):
        def residual(p, x):
            one = {k: (x[None] if k == term else v[:1]) for k, v in batch.items()}
            return task.residual_fn(p, one)[term][0]

        return jax.vmap(jax.grad(residual), in_axes=(None, 0))(params, points)

    return {term: rows(term, points) for term, points in batch.items()}


def per_point_step(task: Task) -> tuple[Callable, Any]:
    """The plain step plus every per-point Jacobian row, computed directly.

    The reference for NTK trace weights at ``update_every = 1``: the traces are
    the squared norms of these rows, summed per term.
    """
    return _reference_step(task, _per_point_rows)


def per_term_step(task: Task) -> tuple[Callable, Any]:
    """The plain step plus one ``jax.grad`` per term, each of that term alone.

    A second reference: when the terms are computed on their own points (as in
    PINNs), each term's gradient needs only its own part of the forward and
    backward pass, which ``jacrev`` of the whole dict cannot skip: it runs the
    backward pass of every term for every term.
    """
    return _reference_step(task, _grad_of_each_term)


# ----------------------------------------------------------------------------------
# Methods: which exist, how to build them, which kind they are.

_NOT_METHODS = frozenset(
    {"global_mean", "loss_weights", "sharded", "weighted_sum", "with_weighting"}
)


def _static_weights(example: Any) -> oil.WeightingMethod:
    # Weight 1 on every term, warmed up from 0.01 over 1000 steps: the
    # schedules are the part of static_weights that costs anything.
    ones = jax.tree.map(lambda _: 1.0, example)
    warmup = optax.linear_schedule(0.01, 1.0, transition_steps=1000)
    return oil.static_weights(ones, schedules=jax.tree.map(lambda _: warmup, example))


# Methods whose factory needs arguments: example losses -> method.
_BUILDERS = {"static_weights": _static_weights}
SETTINGS = {"static_weights": "weights 1, linear warm-up schedule on every term"}


def build(
    name: str, example: Any, update_every: int | None = None
) -> oil.WeightingMethod:
    """``optax_invloss.<name>`` with its defaults (and ``update_every`` if given).

    ``example`` (the losses' structure) is for methods that need it to be built.
    """
    if name in _BUILDERS:
        return _BUILDERS[name](example)
    kwargs = {} if update_every is None else {"update_every": update_every}
    return getattr(oil, name)(**kwargs)


def is_gradient_based(method: oil.WeightingMethod) -> bool:
    """True if ``update`` takes parameters or a function of them as keyword input."""
    return bool(method.inputs & GRADIENT_INPUTS)


def _is_factory(obj) -> bool:
    """A function annotated to return a ``WeightingMethod``."""
    import inspect

    if not inspect.isfunction(obj):
        return False
    return "WeightingMethod" in str(inspect.signature(obj).return_annotation)


def available_methods() -> tuple[list[str], list[str], list[str]]:
    """``(loss-value methods, gradient-based methods, missing names)`` in the library.

    Methods of the library not named in this module are picked up too (a factory
    in ``optax_invloss.__all__`` that builds a ``WeightingMethod`` without
    arguments), so that a new method is benchmarked, or at least reported.
    """
    names = list(LOSS_VALUE_METHODS + GRADIENT_METHODS)
    names += sorted(
        n
        for n in oil.__all__
        if n not in _NOT_METHODS and n not in names and _is_factory(getattr(oil, n))
    )
    loss_value, gradient, missing = [], [], []
    for name in names:
        if name not in oil.__all__:
            missing.append(name)
            continue
        try:
            method = build(name, {"pde": 0.0, "bc": 0.0})
        except TypeError:
            missing.append(f"{name} (needs arguments)")
            continue
        if not isinstance(method, oil.WeightingMethod):
            continue
        (gradient if is_gradient_based(method) else loss_value).append(name)
    return loss_value, gradient, missing


# ----------------------------------------------------------------------------------
# Compiling and timing.


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


# ----------------------------------------------------------------------------------
# One size and problem: every row, judged against its target.


@dataclasses.dataclass
class Group:
    """The rows of one (size, problem), with what is needed to measure them again."""

    size: Size
    problem: str
    keys: jax.Array
    base: Program
    rows: list = dataclasses.field(default_factory=list)
    base_seconds: float = 0.0  # one chunk of the plain step
    # Row index -> (program, its plain step, keys, start carry).
    runs: dict = dataclasses.field(default_factory=dict)
    shorter: dict = dataclasses.field(default_factory=dict)  # length -> plain step
    task: Task | None = None
    clock: str = "wall"

    @property
    def step_seconds(self) -> float:
        """One plain step, as timed after compilation."""
        return self.base_seconds / self.keys.shape[0]


def _row(group: Group, method: str, kind: str, every, **fields) -> dict:
    return {
        "size": group.size.name,
        "problem": group.problem,
        "points_per_term": group.size.points,
        "layers": list(group.size.layers),
        "method": method,
        "kind": kind,
        "update_every": every,
        "chunk": group.size.chunk,
        "settings": SETTINGS.get(method, "defaults"),
        **fields,
    }


def _measure(group: Group, index: int, repeats: int) -> dict:
    program, base, keys, carry = group.runs[index]
    return summarise(paired(base, program, keys, repeats, carry), group.clock)


def no_update_start(carry: Any, step: int) -> Any:
    """``carry`` with the weighting state's counter set to ``step``.

    Every weighting state counts its updates in ``weighting_step``; a chunk that
    starts at ``step = 1`` has no update due before step ``update_every``.
    """
    params, opt_state = carry
    weighting = opt_state.weighting_state
    counter = jnp.asarray(step, weighting.weighting_step.dtype)
    weighting = weighting._replace(weighting_step=counter)
    return params, opt_state._replace(weighting_state=weighting)


def add_measured(
    group: Group,
    method: str,
    kind: str,
    every,
    program: Program,
    *,
    updates: int | None = None,
    start: Any = None,
    base: Program | None = None,
    keys: jax.Array | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measures ``program`` against the plain step and appends the row.

    ``base`` and ``keys``: a plain step and keys of a shorter chunk, for a
    program whose chunk is shorter than the group's; ``start``: the carry to
    start from (default the program's own).
    """
    base = group.base if base is None else base
    keys = group.keys if keys is None else keys
    start = program.carry if start is None else start
    row = _row(
        group,
        method,
        kind,
        every,
        mode="measured",
        chunk=int(keys.shape[0]),
        updates_per_chunk=updates,
        compile_s_plain=base.compile_seconds,
        compile_s_method=program.compile_seconds,
        temp_mib_plain=_mib(base.temp_bytes),
        temp_mib_method=_mib(program.temp_bytes),
        flops_always_vs_plain=_ratio(program.flops, base.flops),
        flops_conditional_vs_plain=_ratio(program.conditional_flops, base.flops),
    )
    fits, why = memory_available(program)
    if not fits:
        row.update(mode="not run", note=why)
        group.rows.append(row)
        log(_line(row))
        return row
    began = time.perf_counter()
    jax.block_until_ready(program.compiled(start, keys))  # warm-up, excluded
    pair_seconds = time.perf_counter() - began
    pair_seconds += group.step_seconds * keys.shape[0]
    index = len(group.rows)
    group.runs[index] = (program, base, keys, start)
    repeats = int(group.size.row_seconds // pair_seconds)
    repeats = max(MIN_REPEATS, min(group.size.repeats, repeats))
    row.update(_measure(group, index, repeats))
    row["peak_device_mib"] = _mib(peak_device_bytes())
    group.rows.append(row)
    log(_line(row))
    return row


def add_not_run(
    group: Group, method: str, every, program: Program, note: str, log=print
) -> dict:
    """A row too slow to measure here, with the cost its FLOPs predict."""
    row = _row(
        group,
        method,
        "gradient",
        every,
        mode="not run",
        note=note,
        compile_s_plain=group.base.compile_seconds,
        compile_s_method=program.compile_seconds,
        temp_mib_plain=_mib(group.base.temp_bytes),
        temp_mib_method=_mib(program.temp_bytes),
        flops_always_vs_plain=_ratio(program.flops, group.base.flops),
        flops_conditional_vs_plain=_ratio(program.conditional_flops, group.base.flops),
    )
    group.rows.append(row)
    log(_line(row))
    return row


def _mib(n):
    return None if n is None else n / 2**20


def _ratio(a, b):
    return None if not b else a / b


def _find(rows, method, every):
    for row in rows:
        if row["method"] == method and row["update_every"] == every:
            return row
    return None


def add_amortised(group: Group, method: str, every: int) -> dict:
    """The row for a K longer than the chunk, from the rows ``K = 1`` and no-update."""
    row = _row(group, method, "gradient", every, mode="amortised", amortised=True)
    group.rows.append(row)
    _amortise(group.rows, row)
    return row


def _amortise(rows: list, row: dict) -> None:
    c = _find(rows, row["method"], 1)
    r0 = _find(rows, row["method"], "none")
    if not (c and r0 and "ratio" in c and "ratio" in r0):
        row.update(mode="not run", note="needs the K = 1 and no-update rows")
        return
    row["mode"] = "amortised"
    k = row["update_every"]
    for key in ("ratio", "ratio_of_medians", "ratio_wall", "ratio_cpu_time"):
        if key in c and key in r0:
            row[key] = r0[key] + (c[key] - r0[key]) / k
    row["clock"] = c["clock"]
    row["base_ms"] = r0["base_ms"]
    row["method_ms"] = r0["method_ms"] + (c["method_ms"] - r0["method_ms"]) / k
    row["note"] = "amortised: r0 + (c - r0) / K from the K = 1 and no-update rows"


def judge(group: Group) -> None:
    """Sets each row's target and PASS/MISS (see the module docstring)."""
    rows = group.rows
    for row in rows:
        if row.get("amortised"):
            _amortise(rows, row)
        target, rule = None, None
        every = row["update_every"]
        if row["kind"] == "loss-value":
            target, rule = group.size.target, f"<= {group.size.target}"
        elif row["kind"] == "gradient" and every == 1:
            label = REFERENCES.get(row["method"], JACREV)
            ref = _find(rows, label, None)
            if ref and "ratio" in ref:
                target = 1.25 * ref["ratio"]
                rule = f"<= 1.25 x {label.split(' ')[0]}"
        elif row["kind"] == "gradient" and every == "none":
            target, rule = 1.02, "<= 1.02"
        elif row["kind"] == "gradient":
            c = _find(rows, row["method"], 1)
            if c and "ratio" in c:
                target = 1.0 + (c["ratio"] - 1.0) / every + 0.02
                rule = "<= 1 + (c - 1)/K + 0.02"
        row["target"], row["target_rule"] = target, rule
        if target is None or "ratio" not in row:
            row["result"] = "n/a" if row["kind"] != "reference" else "reference"
        else:
            row["result"] = "PASS" if row["ratio"] <= target else "MISS"


def rerun_misses(group: Group, log: Callable[[str], None] = print) -> None:
    """Measures every missed row again with twice the repeats, then re-judges."""
    indices = [
        i
        for i, row in enumerate(group.rows)
        if row.get("result") == "MISS" and i in group.runs
    ]
    for i in indices[:]:  # a K = 1 target is relative to a reference: rerun it too
        if group.rows[i]["update_every"] == 1:
            label = REFERENCES.get(group.rows[i]["method"], JACREV)
            ref = next(j for j, r in enumerate(group.rows) if r["method"] == label)
            if ref not in indices:
                indices.insert(0, ref)
    for i in indices:
        row = group.rows[i]
        first = {k: row[k] for k in ("ratio", "pair_q25", "pair_q75", "repeats")}
        row.update(_measure(group, i, 2 * row["repeats"]))
        row.setdefault("attempts", []).append(first)
        log(_line(row, "rerun"))
    judge(group)


def steps_that_fit(group: Group, step_seconds: float) -> int:
    """Steps per chunk that let a warm-up and ``MIN_REPEATS`` pairs fit a row.

    0 if even one step per chunk would take over ten times the row's time.
    """
    per_step = step_seconds + MIN_REPEATS * (step_seconds + group.step_seconds)
    n = int(group.size.row_seconds // per_step)
    if n == 0 and per_step <= 10 * group.size.row_seconds:
        n = 1
    return min(n, group.size.chunk)


def measure_group(
    size: Size,
    problem: str,
    loss_value: list[str],
    gradient: list[str],
    every: tuple[int, ...],
    log: Callable[[str], None] = print,
    rerun: bool = True,
    clock: str = "wall",
) -> list[dict]:
    """All rows for one size and problem."""
    task = make_task(problem, size)
    keys = jax.random.split(jax.random.key(1), size.chunk)
    log(f"[{size.name} {problem}] compiling the plain step ...")
    base = compile_chunk(*plain_step(task), keys)
    jax.block_until_ready(base.compiled(base.carry, keys))  # warm-up
    began = time.perf_counter()
    jax.block_until_ready(base.compiled(base.carry, keys))
    seconds = time.perf_counter() - began
    group = Group(
        size, problem, keys, base, base_seconds=seconds, task=task, clock=clock
    )
    example = jax.eval_shape(task.loss_fn, task.params, task.sample(keys[0]))

    def compile_method(name, k=None, keys=keys):
        return compile_chunk(*method_step(task, build(name, example, k)), keys)

    references = [(PER_TERM, per_term_step), (JACREV, jacrev_step)]
    if any(REFERENCES.get(name) == PER_POINT for name in gradient):
        references.append((PER_POINT, per_point_step))
    for label, make_step in references:
        program = compile_chunk(*make_step(task), keys)
        add_measured(group, label, "reference", None, program, log=log)
    for name in loss_value:
        row = add_measured(
            group, name, "loss-value", None, compile_method(name), log=log
        )
        row["update_us"] = update_cost_us(build(name, example), example, clock=clock)
        if "ratio" in row:
            row["expected_ratio"] = 1.0 + row["update_us"] / (1e3 * row["base_ms"])
        log(f"    update alone: {row['update_us']:.1f} us/step")
    for name in gradient:
        _gradient_rows(group, name, every, compile_method, log)
    judge(group)
    if rerun:
        rerun_misses(group, log)
    return group.rows


def _gradient_rows(group: Group, name: str, every, compile_method, log) -> None:
    """K = 1 (c), K dividing the chunk, no update (r0), and amortised rows."""
    size, keys = group.size, group.keys
    program = compile_method(name, 1)
    # An update step's cost predicted from its matrix products.
    extra = program.conditional_flops / group.base.flops
    update_seconds = group.step_seconds * (1.0 + extra)
    n = steps_that_fit(group, update_seconds)
    if n == 0:
        add_not_run(
            group,
            name,
            1,
            program,
            f"not run: an update step has {extra:.0f} x the plain step's "
            f"matrix products, about {update_seconds / 60:.0f} min here "
            f"(predicted ratio about {1 + extra:.0f})",
            log,
        )
    else:
        base = None
        if n < size.chunk:  # a slow update: time it in shorter chunks
            if n not in group.shorter:
                group.shorter[n] = compile_chunk(*plain_step(group.task), keys[:n])
            base = group.shorter[n]
            program = compile_method(name, 1, keys[:n])
        add_measured(
            group,
            name,
            "gradient",
            1,
            program,
            updates=n,
            base=base,
            keys=keys[:n],
            log=log,
        )
    direct = [k for k in every if k > 1 and size.chunk % k == 0]
    longer = [k for k in every if k > 1 and size.chunk % k != 0]
    for k in direct:
        updates = size.chunk // k
        chunk_seconds = group.base_seconds + updates * (
            update_seconds - group.step_seconds
        )
        program = compile_method(name, k)
        if chunk_seconds * (1 + 2 * MIN_REPEATS) > 10 * size.row_seconds:
            add_not_run(
                group, name, k, program,
                f"not run: {updates} update(s) per chunk, about "
                f"{chunk_seconds / 60:.0f} min a chunk here",
                log,
            )  # fmt: skip
            continue
        add_measured(
            group, name, "gradient", k, program, updates=updates, log=log
        )  # fmt: skip
    if longer:
        k_max = max(longer)
        if size.chunk < k_max:
            # From step 1, no update is due before step k_max.
            program = compile_method(name, k_max)
            add_measured(
                group,
                name,
                "gradient",
                "none",
                program,
                updates=0,
                start=no_update_start(program.carry, 1),
                log=log,
            )
    for k in longer:
        add_amortised(group, name, k)


def _line(row: dict, prefix: str = "") -> str:
    every = row["update_every"]
    every = "" if every is None else f" K={every}"
    if "ratio" not in row:
        return f"  {prefix}{row['method']}{every}: {row.get('note', row['mode'])}"
    return (
        f"  {prefix}{row['method']}{every}: ratio {row['ratio']:.3f} "
        f"[{row.get('pair_q25', float('nan')):.3f}, "
        f"{row.get('pair_q75', float('nan')):.3f}] "
        f"({row['base_ms']:.2f} -> {row['method_ms']:.2f} ms/step)"
    )


# ----------------------------------------------------------------------------------
# Machine, versions, and the results files.


def machine() -> dict:
    device = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict:
    import flax
    import jaxlib

    commit = "unknown"
    try:
        root = pathlib.Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "optax_invloss": oil.__version__,
        "git": commit,
    }


def _fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def markdown(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    peak_reported = any(r.get("peak_device_mib") for r in report["rows"])
    missing = ", ".join(report["methods"]["missing"])
    lines = [
        f"# Cost per step of the weighting methods ({m['backend'].upper()})",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}; total run time {report['seconds'] / 60:.1f} min",
        f"- Machine: {m['device']} ({m['backend']}); CPU {m['cpu']}, "
        f"{m['cpu_count']} cores; load average {m.get('load_average_at_start')} at "
        f"start, {m.get('load_average_at_end')} at the end",
        f"- Versions: jax {v['jax']} (jaxlib {v['jaxlib']}), optax {v['optax']}, "
        f"flax {v['flax']}, optax_invloss {v['optax_invloss']} ({v['git']})",
        "- Peak device memory: "
        + (
            "per row, process-wide peak so far (`memory_stats()`)"
            if peak_reported
            else "not reported by this backend; the compiled programs' temporary "
            "buffers (`compiled.memory_analysis()`) are given instead"
        ),
        f"- Methods measured: {', '.join(report['methods']['loss_value'])} "
        f"(loss-value); {', '.join(report['methods']['gradient']) or 'none'} "
        "(gradient-based)."
        + (f" Not in the library at this commit: {missing}." if missing else ""),
        "",
        f"**Ratio** (judged on the {report.get('clock', 'wall')} clock) = "
        + (
            "median over the A/B pairs of (step time with the method / step time "
            "of the same step with the plain sum), the two halves of each pair run "
            "back to back (so a change of the machine's speed between pairs cancels); "
            "*ratio of medians*: median method time / median plain time. "
            if report.get("paired", False)
            else "median step time with the method / median step time of the same "
            "step with the plain sum (this run predates the paired estimator). "
        )
        + "Measured side by side (A/B alternating) in one "
        "process after compilation, each timed call a `lax.scan` over `chunk` steps "
        "from the same start. *Pairs q25-q75*: quartiles of the per-repeat ratios "
        "(the spread). *Wall / CPU ratio*: the ratio from elapsed time and from "
        "the process's CPU time. *Matmul "
        "FLOPs*: static `dot` FLOPs of the compiled program relative to the plain "
        "step's, always run / inside `lax.cond` branches (taken on update steps "
        "only). *Update alone*: the wall time the weighting update and weighted "
        "sum add per step, timed alone over 2000 steps (A/B), and the ratio it "
        "implies for this step. K = *none*: a chunk in which no update is due; "
        "*amortised*: r0 + (c - r0)/K from the K = 1 (c) and no-update (r0) rows.",
        "",
        "Targets: loss-value ratio <= 1.03 (small) / 1.01 (large); gradient-based "
        "with K: <= 1 + (c - 1)/K + 0.02 (no update: <= 1.02), and c <= 1.25 x the "
        "jacrev reference (NTK weights: the per-point Jacobian reference, "
        "`jax.vmap` over each term's points of `jax.grad` of its residual). A "
        "missed row is measured again with twice the repeats; "
        "the rerun is what is shown (the first attempt is in the JSON).",
    ]
    sizes = {}
    for row in report["rows"]:
        sizes.setdefault(row["size"], []).append(row)
    for name, rows in sizes.items():
        size = report["sizes"][name]
        lines += [
            "",
            f"## {name}: MLP {size['layers']}, {size['points']} points per term, "
            f"chunk {size['chunk']} steps, up to {size['repeats']} A/B pairs per "
            f"row (fewer where {size['row_seconds']:.0f} s would not hold them)",
            "",
            f"| problem | method | K | mode | ratio ({report.get('clock', 'wall')}) "
            "| pairs q25-q75 | ratio of medians | wall / CPU ratio "
            "| ms/step plain -> method | update alone us (-> ratio) "
            "| compile s plain / method "
            "| temp MiB plain / method | matmul FLOPs always / cond "
            + ("| peak MiB " if peak_reported else "")
            + "| target | result |",
            "|" + "---|" * (15 if peak_reported else 14),
        ]
        for r in rows:
            every = "" if r["update_every"] is None else str(r["update_every"])
            has = "ratio" in r
            cells = [
                r["problem"],
                r["method"],
                every,
                r["mode"] + (" (rerun)" if r.get("attempts") else ""),
                _fmt(r.get("ratio")) if has else r.get("note", ""),
                (
                    f"{r['pair_q25']:.3f}-{r['pair_q75']:.3f} (n={r['repeats']})"
                    if "pair_q25" in r
                    else "-"
                ),
                _fmt(r.get("ratio_of_medians")) if "ratio_of_medians" in r else "-",
                f"{_fmt(r.get('ratio_wall'))} / {_fmt(r.get('ratio_cpu_time'))}",
                (f"{r['base_ms']:.2f} -> {r['method_ms']:.2f}" if has else "-"),
                (
                    f"{r['update_us']:.1f} (-> {r['expected_ratio']:.4f})"
                    if "expected_ratio" in r
                    else "-"
                ),
                (
                    f"{r['compile_s_plain']:.1f} / {r['compile_s_method']:.1f}"
                    if "compile_s_method" in r
                    else "-"
                ),
                (
                    f"{_fmt(r.get('temp_mib_plain'), '.1f')} / "
                    f"{_fmt(r.get('temp_mib_method'), '.1f')}"
                    if "temp_mib_method" in r
                    else "-"
                ),
                (
                    f"{_fmt(r.get('flops_always_vs_plain'), '.2f')} / "
                    f"{_fmt(r.get('flops_conditional_vs_plain'), '.2f')}"
                    if "flops_always_vs_plain" in r
                    else "-"
                ),
            ]
            if peak_reported:
                cells.append(_fmt(r.get("peak_device_mib"), ".0f"))
            cells += [
                _fmt(r.get("target"))
                + (f" ({r['target_rule']})" if r.get("target_rule") else ""),
                r.get("result", ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    notes = report.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small size only, short")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", help="only these methods")
    parser.add_argument("--every", nargs="+", type=int, default=list(EVERY))
    parser.add_argument("--repeats", type=int, help="A/B pairs per row (all sizes)")
    parser.add_argument("--chunk", type=int, help="steps per timed call (all sizes)")
    parser.add_argument("--no-rerun", action="store_true", help="do not rerun misses")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="judge by elapsed time (default) or by the process's CPU time (on a "
        "CPU shared with other jobs; never on a GPU, whose work it does not see)",
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--name", help="file name without extension (default overhead_<backend>)"
    )
    parser.add_argument(
        "--notes",
        default="benchmarks/overhead_notes.md",
        help="markdown appended under 'Notes' if the file exists",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the markdown of a saved run (with the current notes)",
    )
    args = parser.parse_args(argv)
    if args.render:
        path = pathlib.Path(args.render)
        report = json.loads(path.read_text())
        notes = pathlib.Path(args.notes)
        report["notes"] = notes.read_text() if notes.is_file() else None
        path.write_text(json.dumps(report, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(report))
        return report
    command = "python -m benchmarks.overhead " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    sizes = dict(QUICK) if args.quick else dict(SIZES)
    if args.sizes:
        sizes = {
            n: (QUICK if args.quick and n in QUICK else SIZES)[n] for n in args.sizes
        }
    for name, size in sizes.items():
        if args.repeats:
            size = dataclasses.replace(size, repeats=args.repeats)
        if args.chunk:
            size = dataclasses.replace(size, chunk=args.chunk)
        sizes[name] = size
    if args.clock == "cpu" and jax.default_backend() != "cpu":
        parser.error("--clock cpu measures host CPU time: use it on a CPU only")
    loss_value, gradient, missing = available_methods()
    if args.methods:
        unknown = set(args.methods) - set(loss_value) - set(gradient)
        if unknown:
            parser.error(f"not methods of this library: {sorted(unknown)}")
        loss_value = [n for n in loss_value if n in args.methods]
        gradient = [n for n in gradient if n in args.methods]
    start = time.perf_counter()
    code = versions()  # the code that runs, not what is there at the end
    log = lambda text: print(text, flush=True)
    log(f"loss-value: {loss_value}; gradient-based: {gradient}; missing: {missing}")
    info = machine()
    rows = []
    for size in sizes.values():
        for problem in args.problems:
            rows += measure_group(
                size,
                problem,
                loss_value,
                gradient,
                tuple(sorted(set(args.every))),
                log=log,
                rerun=not args.no_rerun,
                clock=args.clock,
            )
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    notes = pathlib.Path(args.notes)
    report = {
        "command": command,
        "clock": args.clock,
        "paired": True,  # "ratio" is the median of the per-pair ratios
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "seconds": time.perf_counter() - start,
        "machine": info,
        "versions": code,
        "sizes": {n: dataclasses.asdict(s) for n, s in sizes.items()},
        "methods": {"loss_value": loss_value, "gradient": gradient, "missing": missing},
        "rows": rows,
        "notes": notes.read_text() if notes.is_file() else None,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (
        args.name
        or f"overhead_{'gpu' if info['backend'] == 'gpu' else info['backend']}"
    )
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    misses = [r for r in rows if r.get("result") == "MISS"]
    log(
        f"wrote {out / name}.json and .md in {report['seconds'] / 60:.1f} min; "
        f"{len(misses)} row(s) missed their target"
    )
    return report


if __name__ == "__main__":
    main()
