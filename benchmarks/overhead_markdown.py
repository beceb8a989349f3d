"""The overhead benchmark's markdown report, rendered from its JSON.

The table is built from :data:`COLUMNS`, one ``(header, cell)`` pair per column,
so that a column is added or changed in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from benchmarks.overhead_rows import Row


def _fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


class Column(NamedTuple):
    """A table column: its header (``{clock}`` filled in) and its cell of a row."""

    header: str
    cell: Callable[[Row], str]


def _pair(a, b, spec):
    return f"{_fmt(a, spec)} / {_fmt(b, spec)}"


def _compiled(cell: Callable[[Row], str]) -> Callable[[Row], str]:
    """``cell``, or "-" for a row without a compiled program (amortised)."""
    return lambda r: "-" if r.compile_s_method is None else cell(r)


COLUMNS = (
    Column("problem", lambda r: r.problem),
    Column("method", lambda r: r.method),
    Column("K", lambda r: "" if r.update_every is None else str(r.update_every)),
    Column("mode", lambda r: r.mode + (" (rerun)" if r.attempts else "")),
    Column(
        "ratio ({clock})", lambda r: _fmt(r.ratio) if r.measured else (r.note or "")
    ),
    Column(
        "pairs q25-q75",
        lambda r: (
            "-"
            if r.pair_q25 is None
            else f"{r.pair_q25:.3f}-{r.pair_q75:.3f} (n={r.repeats})"
        ),
    ),
    Column("ratio of medians", lambda r: _fmt(r.ratio_of_medians)),
    Column("wall / CPU ratio", lambda r: _pair(r.ratio_wall, r.ratio_cpu_time, ".3f")),
    Column(
        "ms/step plain -> method",
        lambda r: f"{r.base_ms:.2f} -> {r.method_ms:.2f}" if r.measured else "-",
    ),
    Column(
        "update alone us (-> ratio)",
        lambda r: (
            "-"
            if r.expected_ratio is None
            else f"{r.update_us:.1f} (-> {r.expected_ratio:.4f})"
        ),
    ),
    Column(
        "compile s plain / method",
        _compiled(lambda r: _pair(r.compile_s_plain, r.compile_s_method, ".1f")),
    ),
    Column(
        "temp MiB plain / method",
        _compiled(lambda r: _pair(r.temp_mib_plain, r.temp_mib_method, ".1f")),
    ),
    Column(
        "matmul FLOPs always / cond",
        _compiled(
            lambda r: _pair(
                r.flops_always_vs_plain, r.flops_conditional_vs_plain, ".2f"
            )
        ),
    ),
)
#: Shown only when the backend reports peak device memory.
PEAK = Column("peak MiB", lambda r: _fmt(r.peak_device_mib, ".0f"))
JUDGEMENT = (
    Column(
        "target",
        lambda r: _fmt(r.target) + (f" ({r.target_rule})" if r.target_rule else ""),
    ),
    Column("result", lambda r: r.result or ""),
)


def table(rows: list[Row], columns, clock: str) -> list[str]:
    """The markdown lines of a table of ``rows``."""
    headers = [c.header.format(clock=clock) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return lines


READING = (
    "Measured side by side (A/B alternating) in one "
    "process after compilation, each timed call a `lax.scan` over `chunk` steps "
    "from the same start. *Pairs q25-q75*: quartiles of the per-repeat ratios "
    "(the spread). *Wall / CPU ratio*: the ratio from elapsed time and from "
    "the process's CPU time. *Matmul "
    "FLOPs*: static `dot` FLOPs of the compiled program relative to the plain "
    "step's, always run / inside `lax.cond` branches (taken on update steps "
    "only). *Update alone*: the wall time the weighting update and weighted "
    "sum add per step, timed alone over 2000 steps (A/B), and the ratio it "
    "implies for this step. K = *none*: a chunk in which no update is due; "
    "*amortised*: r0 + (c - r0)/K from the K = 1 (c) and no-update (r0) rows."
)
PAIRED = (
    "median over the A/B pairs of (step time with the method / step time "
    "of the same step with the plain sum), the two halves of each pair run "
    "back to back (so a change of the machine's speed between pairs cancels); "
    "*ratio of medians*: median method time / median plain time. "
)
UNPAIRED = (
    "median step time with the method / median step time of the same "
    "step with the plain sum (this run predates the paired estimator). "
)
TARGETS = (
    "Targets: loss-value ratio <= 1.01 (small and large); gradient-based "
    "with K: <= 1 + (c - 1)/K + 0.01 (no update: <= 1.01), and c <= 1.25 x the "
    "jacrev reference (NTK weights: the per-point Jacobian reference, "
    "`jax.vmap` over each term's points of `jax.grad` of its residual). A "
    "missed row is measured again with twice the repeats; "
    "the rerun is what is shown (the first attempt is in the JSON)."
)


def markdown(report: dict) -> str:
    """The markdown report of a saved run (``overhead_<backend>.json``)."""
    m, v = report["machine"], report["versions"]
    rows = [Row.from_json(r) for r in report["rows"]]
    clock = report.get("clock", "wall")
    peak_reported = any(r.peak_device_mib for r in rows)
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
        f"**Ratio** (judged on the {clock} clock) = "
        + (PAIRED if report.get("paired", False) else UNPAIRED)
        + READING,
        "",
        TARGETS,
    ]
    columns = COLUMNS + ((PEAK,) if peak_reported else ()) + JUDGEMENT
    sizes: dict[str, list[Row]] = {}
    for row in rows:
        sizes.setdefault(row.size, []).append(row)
    for name, mine in sizes.items():
        size = report["sizes"][name]
        lines += [
            "",
            f"## {name}: MLP {size['layers']}, {size['points']} points per term, "
            f"chunk {size['chunk']} steps, up to {size['repeats']} A/B pairs per "
            f"row (fewer where {size['row_seconds']:.0f} s would not hold them)",
            "",
            *table(mine, columns, clock),
        ]
    notes = report.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"
