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

Gradient aggregators (``config``, ``upgrad``, ``pcgrad``, ... with ``num_terms``
the problem's) are gradient-based rows too: the runner's step, ``optax.chain`` of
the aggregator and the optimizer, its ``update`` given ``loss_fn=`` (one
``jax.grad`` per term and the Gram-matrix solve on refresh steps, one gradient of
the weighted sum with the stored weights in between); their K = 1 reference is
one ``jax.grad`` per term. ``--methods config upgrad pcgrad --name
overhead_aggregators`` measures them alone.

Targets (medians, side by side; issue 19): loss-value methods ratio <= 1.01 on both
sizes; gradient-based ratio <= 1 + (c - 1) / K + 0.01 (so <= 1.01 on a step with no
update), and ``c <= 1.25 * r_jacrev``. A row that misses
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
``gpu``), with the machine, versions, date and the command
(``benchmarks/provenance.py``). The pieces: the steps timed
(``benchmarks/overhead_steps.py``), compiling and timing them
(``benchmarks/timing.py``), the rows and their targets
(``benchmarks/overhead_rows.py``) and the markdown
(``benchmarks/overhead_markdown.py``); this module runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import optax

import optax_invloss as oil
from benchmarks import methods, provenance
from benchmarks.overhead_group import (
    MIN_REPEATS,
    Group,
    add_amortised,
    add_measured,
    add_not_run,
    no_update_start,
    rerun_misses,
    steps_that_fit,
)
from benchmarks.overhead_markdown import markdown
from benchmarks.overhead_rows import (
    JACREV,
    PER_POINT,
    PER_TERM,
    REFERENCES,
    Row,
)
from benchmarks.overhead_steps import (
    Task,
    jacrev_step,
    make_task,
    method_step,
    per_point_step,
    per_term_step,
    plain_step,
)
from benchmarks.timing import (
    compile_chunk,
    update_cost_us,
)

__all__ = ["JACREV", "PER_POINT", "PER_TERM", "Task", "main"]

#: The order of the report; methods of the library not named here come after.
LOSS_VALUE_METHODS = (
    "inverse_loss",
    "static_weights",
    "softadapt",
    "relobralo",
    "uncertainty_weighting",
    "dwa",
)
GRADIENT_METHODS = ("lr_annealing", "grad_norm_balance", "ntk_weights", "gradnorm")
#: Gradient aggregators first in their group; the others with ``update_every``
#: follow. They are gradient-based rows (K = 1: a refresh every step, judged
#: against one ``jax.grad`` per term; K > 1: one gradient of the weighted sum
#: between refreshes), chained in front of the optimizer as the runner does.
AGGREGATOR_METHODS = ("config", "upgrad", "pcgrad")
EVERY = (1, 10, 100, 1000)
PROBLEMS = ("helmholtz", "helmholtz5")


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


SIZES = {
    "small": Size("small", (2, 50, 50, 50, 1), 128, 100, 8, 1.01, row_seconds=40.0),
    "large": Size(
        "large", (2, 256, 256, 256, 256, 1), 8192, 1, 3, 1.01, row_seconds=60.0
    ),
}
QUICK = {
    "small": dataclasses.replace(SIZES["small"], chunk=50, repeats=5, row_seconds=15.0)
}


# ----------------------------------------------------------------------------------
# Methods: which exist (benchmarks/methods.py), how they are built here.


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
) -> oil.WeightingMethod | methods.Aggregator:
    """``optax_invloss.<name>`` with its defaults (and ``update_every`` if given).

    ``example`` (the losses' structure) is for methods that need it to be built;
    an aggregator gets ``num_terms`` from it and is wrapped as the runner wraps it.
    """
    if name in _BUILDERS:
        return _BUILDERS[name](example)
    kwargs = {} if update_every is None else {"update_every": update_every}
    aggregators = methods.aggregator_factories()
    if name in aggregators:
        num_terms = len(jax.tree.leaves(example))
        return methods.Aggregator(
            aggregators[name](num_terms=num_terms, **kwargs),
            name,
            update_every=update_every or 1,
        )
    return methods.factories()[name](**kwargs)


def available_methods() -> tuple[list[str], list[str], list[str]]:
    """``(loss-value methods, gradient-based methods, missing names)`` in the library.

    Every public factory (:func:`benchmarks.methods.factories`) is benchmarked,
    those named in this module first, so that a new method is benchmarked, or at
    least reported: one that cannot be built without arguments is "missing".
    The gradient aggregators with ``update_every``
    (:func:`benchmarks.methods.aggregator_factories`) come last among the
    gradient-based methods; M-ConFIG, one term's gradient per step with no
    ``update_every``, is reported as missing.
    """
    found = methods.factories()
    named = LOSS_VALUE_METHODS + GRADIENT_METHODS
    missing = [name for name in named if name not in found]
    loss_value, gradient = [], []
    for name in [n for n in named if n in found] + sorted(set(found) - set(named)):
        try:
            method = build(name, {"pde": 0.0, "bc": 0.0})
        except TypeError:
            missing.append(f"{name} (needs arguments)")
            continue
        (gradient if methods.needs_gradients(method) else loss_value).append(name)
    aggregators = methods.aggregator_factories()
    ordered = [n for n in AGGREGATOR_METHODS if n in aggregators]
    for name in ordered + sorted(set(aggregators) - set(ordered)):
        if "update_every" in inspect.signature(aggregators[name]).parameters:
            gradient.append(name)
        else:
            missing.append(f"{name} (no update_every: not measured)")
    return loss_value, gradient, missing


# ----------------------------------------------------------------------------------
# One size and problem: every row, measured and judged against its target.


def measure_group(
    size: Size,
    problem: str,
    loss_value: list[str],
    gradient: list[str],
    every: tuple[int, ...],
    log: Callable[[str], None] = print,
    rerun: bool = True,
    clock: str = "wall",
) -> list[Row]:
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
        size, problem, keys, base, base_seconds=seconds, task=task, clock=clock,
        log=log, settings=SETTINGS,
    )  # fmt: skip
    example = jax.eval_shape(task.loss_fn, task.params, task.sample(keys[0]))

    def compile_method(name, k=None, keys=keys):
        return compile_chunk(*method_step(task, build(name, example, k)), keys)

    references = [(PER_TERM, per_term_step), (JACREV, jacrev_step)]
    if any(REFERENCES.get(name) == PER_POINT for name in gradient):
        references.append((PER_POINT, per_point_step))
    for label, make_step in references:
        program = compile_chunk(*make_step(task), keys)
        add_measured(group, label, "reference", None, program)
    for name in loss_value:
        row = add_measured(group, name, "loss-value", None, compile_method(name))
        row.update_us = update_cost_us(build(name, example), example, clock=clock)
        if row.measured:
            row.expected_ratio = 1.0 + row.update_us / (1e3 * row.base_ms)
        log(f"    update alone: {row.update_us:.1f} us/step")
    for name in gradient:
        _gradient_rows(group, name, every, compile_method)
    group.judge()
    if rerun:
        rerun_misses(group)
    return group.rows


def _gradient_rows(group: Group, name: str, every, compile_method) -> None:
    """K = 1 (c), K dividing the chunk, no update (r0), and amortised rows."""
    size, keys = group.size, group.keys
    program = compile_method(name, 1)
    # An update step's cost predicted from its matrix products.
    extra = program.conditional_flops / group.base.flops
    update_seconds = group.step_seconds * (1.0 + extra)
    n = steps_that_fit(group, update_seconds)
    if n == 0:
        add_not_run(
            group, name, 1, program,
            f"not run: an update step has {extra:.0f} x the plain step's "
            f"matrix products, about {update_seconds / 60:.0f} min here "
            f"(predicted ratio about {1 + extra:.0f})",
        )  # fmt: skip
    else:
        base = None
        if n < size.chunk:  # a slow update: time it in shorter chunks
            if n not in group.shorter:
                group.shorter[n] = compile_chunk(*plain_step(group.task), keys[:n])
            base = group.shorter[n]
            program = compile_method(name, 1, keys[:n])
        add_measured(
            group, name, "gradient", 1, program, updates=n, base=base, keys=keys[:n]
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
            )  # fmt: skip
            continue
        add_measured(group, name, "gradient", k, program, updates=updates)
    if longer:
        k_max = max(longer)
        if size.chunk < k_max:
            # From step 1, no update is due before step k_max.
            program = compile_method(name, k_max)
            start = no_update_start(program.carry, 1)
            add_measured(
                group, name, "gradient", "none", program, updates=0, start=start
            )
    for k in longer:
        add_amortised(group, name, k)


# ----------------------------------------------------------------------------------
# The command line.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small size only, short")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES))
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--methods", nargs="+", help="only these methods")
    p.add_argument("--every", nargs="+", type=int, default=list(EVERY))
    p.add_argument("--repeats", type=int, help="A/B pairs per row (all sizes)")
    p.add_argument("--chunk", type=int, help="steps per timed call (all sizes)")
    p.add_argument("--no-rerun", action="store_true", help="do not rerun misses")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="judge by elapsed time (default) or by the process's CPU time (on a "
        "CPU shared with other jobs; never on a GPU, whose work it does not see)",
    )
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--name", help="file name without extension (default overhead_<backend>)"
    )
    p.add_argument(
        "--notes",
        default="benchmarks/overhead_notes.md",
        help="markdown appended under 'Notes' if the file exists",
    )
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the markdown of a saved run (with the current notes)",
    )
    return p


def _read_notes(path: str) -> str | None:
    notes = pathlib.Path(path)
    return notes.read_text() if notes.is_file() else None


def render(path: pathlib.Path, notes: str) -> dict:
    """Rewrites a saved run's markdown, and the notes in its JSON."""
    report = json.loads(path.read_text())
    report["notes"] = _read_notes(notes)
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(report))
    return report


def _sizes(args: argparse.Namespace) -> dict[str, Size]:
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
    return sizes


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    if args.render:
        return render(pathlib.Path(args.render), args.notes)
    if args.clock == "cpu" and jax.default_backend() != "cpu":
        cli.error("--clock cpu measures host CPU time: use it on a CPU only")
    sizes = _sizes(args)
    loss_value, gradient, missing = available_methods()
    if args.methods:
        unknown = set(args.methods) - set(loss_value) - set(gradient)
        if unknown:
            cli.error(f"not methods of this library: {sorted(unknown)}")
        loss_value = [n for n in loss_value if n in args.methods]
        gradient = [n for n in gradient if n in args.methods]
    start = time.perf_counter()
    # The code that runs, not what is there at the end.
    stamp = provenance.stamp("benchmarks.overhead", argv)
    log = lambda text: print(text, flush=True)
    log(f"loss-value: {loss_value}; gradient-based: {gradient}; missing: {missing}")
    rows: list[Row] = []
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
    stamp["machine"]["load_average_at_end"] = provenance.load_average()
    report = {
        "command": stamp["command"],
        "clock": args.clock,
        "paired": True,  # "ratio" is the median of the per-pair ratios
        "date": stamp["date"],
        "seconds": time.perf_counter() - start,
        "machine": stamp["machine"],
        "versions": stamp["versions"],
        "sizes": {n: dataclasses.asdict(s) for n, s in sizes.items()},
        "methods": {"loss_value": loss_value, "gradient": gradient, "missing": missing},
        "rows": [row.to_json() for row in rows],
        "notes": _read_notes(args.notes),
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = report["machine"]["backend"]
    name = args.name or f"overhead_{backend}"
    text = json.dumps(report, indent=1) + "\n"
    (out / f"{name}.json").write_text(text)
    (out / f"{name}.md").write_text(markdown(json.loads(text)))  # as --render
    misses = [r for r in rows if r.result == "MISS"]
    log(
        f"wrote {out / name}.json and .md in {report['seconds'] / 60:.1f} min; "
        f"{len(misses)} row(s) missed their target"
    )
    return report


if __name__ == "__main__":
    main()
