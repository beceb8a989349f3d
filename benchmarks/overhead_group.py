"""Measuring one (size, problem) of the overhead benchmark: its rows, timed.

A :class:`Group` holds the plain step of one size and problem, its rows and the
compiled programs behind them, so that a missed row can be measured again.
``add_measured`` times a program against the plain step (A/B pairs, as many as
the size's ``row_seconds`` hold, at least :data:`MIN_REPEATS`), ``add_not_run``
records a row too slow to run here, ``add_amortised`` one derived from others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.overhead_rows import Row, judge, line, reference_of
from benchmarks.overhead_steps import Task
from benchmarks.timing import (
    Program,
    memory_available,
    paired,
    peak_device_bytes,
    summarise,
)

MIN_REPEATS = 3


@dataclasses.dataclass
class Group:
    """The rows of one (size, problem), with what is needed to measure them again."""

    size: Any  # an overhead Size
    problem: str
    keys: jax.Array
    base: Program
    rows: list[Row] = dataclasses.field(default_factory=list)
    base_seconds: float = 0.0  # one chunk of the plain step
    # Row index -> (program, its plain step, keys, start carry).
    runs: dict = dataclasses.field(default_factory=dict)
    shorter: dict = dataclasses.field(default_factory=dict)  # length -> plain step
    task: Task | None = None
    clock: str = "wall"
    log: Callable[[str], None] = print
    settings: dict = dataclasses.field(default_factory=dict)  # method -> how built

    @property
    def step_seconds(self) -> float:
        """One plain step, as timed after compilation."""
        return self.base_seconds / self.keys.shape[0]

    def row(self, method: str, kind: str, every, **fields) -> Row:
        """A new row of this group (not yet added)."""
        return Row(
            size=self.size.name,
            problem=self.problem,
            points_per_term=self.size.points,
            layers=list(self.size.layers),
            method=method,
            kind=kind,
            update_every=every,
            chunk=self.size.chunk,
            settings=self.settings.get(method, "defaults"),
        ).set(**fields)

    def add(self, row: Row, prefix: str = "") -> Row:
        """Appends ``row`` and logs it."""
        self.rows.append(row)
        self.log(line(row, prefix))
        return row

    def measure(self, index: int, repeats: int) -> dict:
        """Times row ``index``'s program against its plain step: ``summarise``."""
        program, base, keys, carry = self.runs[index]
        return summarise(paired(base, program, keys, repeats, carry), self.clock)

    def judge(self) -> None:
        """Sets every row's target and result."""
        judge(self.rows, self.size.target)


def _compiled_fields(base: Program, program: Program) -> dict:
    mib = lambda n: None if n is None else n / 2**20
    ratio = lambda a, b: None if not b else a / b
    return dict(
        compile_s_plain=base.compile_seconds,
        compile_s_method=program.compile_seconds,
        temp_mib_plain=mib(base.temp_bytes),
        temp_mib_method=mib(program.temp_bytes),
        flops_always_vs_plain=ratio(program.flops, base.flops),
        flops_conditional_vs_plain=ratio(program.conditional_flops, base.flops),
    )


def no_update_start(carry: Any, step: int) -> Any:
    """``carry`` with the weighting state's counter set to ``step``.

    Every weighting state counts its updates in ``weighting_step``; a chunk that
    starts at ``step = 1`` has no update due before step ``update_every``. An
    aggregator chained in front of the optimizer counts them in
    ``aggregation_step`` (the chain's first state).
    """
    params, opt_state = carry
    if not hasattr(opt_state, "weighting_state"):  # optax.chain(aggregator, ...)
        first, *others = opt_state
        counter = jnp.asarray(step, first.aggregation_step.dtype)
        first = first._replace(aggregation_step=counter)
        return params, type(opt_state)((first, *others))
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
) -> Row:
    """Measures ``program`` against the plain step and appends the row.

    ``base`` and ``keys``: a plain step and keys of a shorter chunk, for a
    program whose chunk is shorter than the group's; ``start``: the carry to
    start from (default the program's own).
    """
    base = group.base if base is None else base
    keys = group.keys if keys is None else keys
    start = program.carry if start is None else start
    row = group.row(
        method,
        kind,
        every,
        chunk=int(keys.shape[0]),
        updates_per_chunk=updates,
        **_compiled_fields(base, program),
    )
    fits, why = memory_available(program)
    if not fits:
        return group.add(row.set(mode="not run", note=why))
    began = time.perf_counter()
    jax.block_until_ready(program.compiled(start, keys))  # warm-up, excluded
    pair_seconds = time.perf_counter() - began
    pair_seconds += group.step_seconds * keys.shape[0]
    group.runs[len(group.rows)] = (program, base, keys, start)
    repeats = int(group.size.row_seconds // pair_seconds)
    repeats = max(MIN_REPEATS, min(group.size.repeats, repeats))
    row.set(**group.measure(len(group.rows), repeats))
    mib = peak_device_bytes()
    row.peak_device_mib = None if mib is None else mib / 2**20
    return group.add(row)


def add_not_run(group: Group, method: str, every, program: Program, note: str) -> Row:
    """A row too slow to measure here, with the cost its FLOPs predict."""
    row = group.row(
        method,
        "gradient",
        every,
        mode="not run",
        note=note,
        **_compiled_fields(group.base, program),
    )
    return group.add(row)


def add_amortised(group: Group, method: str, every: int) -> Row:
    """The row for a K longer than the chunk, from the rows ``K = 1`` and no-update."""
    row = group.row(method, "gradient", every, mode="amortised", amortised=True)
    group.rows.append(row)
    return row


def rerun_misses(group: Group) -> None:
    """Measures every missed row again with twice the repeats, then re-judges."""
    rows = group.rows
    indices = [
        i for i, row in enumerate(rows) if row.result == "MISS" and i in group.runs
    ]
    for i in indices[:]:  # a K = 1 target is relative to a reference: rerun it too
        if rows[i].update_every == 1:
            label = reference_of(rows[i].method)
            ref = next(j for j, r in enumerate(rows) if r.method == label)
            if ref not in indices:
                indices.insert(0, ref)
    for i in indices:
        row = rows[i]
        first = dict(
            ratio=row.ratio, pair_q25=row.pair_q25, pair_q75=row.pair_q75,
            repeats=row.repeats,
        )  # fmt: skip
        row.set(**group.measure(i, 2 * row.repeats))
        row.attempts = [*(row.attempts or []), first]
        group.log(line(row, "rerun "))
    group.judge()


def steps_that_fit(group: Group, step_seconds: float) -> int:
    """Steps per chunk that let a warm-up and ``MIN_REPEATS`` pairs fit a row.

    0 if even one step per chunk would take over ten times the row's time.
    """
    per_step = step_seconds + MIN_REPEATS * (step_seconds + group.step_seconds)
    n = int(group.size.row_seconds // per_step)
    if n == 0 and per_step <= 10 * group.size.row_seconds:
        n = 1
    return min(n, group.size.chunk)
