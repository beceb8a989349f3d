"""Rows of the overhead benchmark: one typed record per measurement, and judging.

A :class:`Row` is one (size, problem, method, ``update_every``) measurement: how it
was run, what the timing gave (:func:`benchmarks.timing.summarise`'s fields),
what the compiler reported, and the target it is judged against. :func:`judge`
sets the targets (see ``benchmarks/overhead.py``'s docstring) and PASS/MISS;
:func:`amortise` fills a row for a K longer than the chunk from two measured rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

JACREV = "jacrev (per-term grads)"
PER_TERM = "grad of each term (loop)"
PER_POINT = "per-point Jacobian (vmap of grad)"
# Gradient-based methods whose K = 1 cost is judged against another reference
# than JACREV: NTK weights need one Jacobian row per point, not one per term;
# the gradient aggregators take one jax.grad per term (the library's
# term_gradients), so the loop of per-term grads is theirs.
REFERENCES = {"ntk_weights": PER_POINT} | {
    name: PER_TERM
    for name in (
        "config", "upgrad", "pcgrad", "dualproj", "imtl_g", "mgda", "cagrad",
        "nash_mtl",
    )
}  # fmt: skip

#: Fields a row always writes to the JSON, None or not; the others are written
#: only when set (a row that did not run has no timing fields).
ALWAYS = (
    "size", "problem", "points_per_term", "layers", "method", "kind",
    "update_every", "chunk", "settings", "mode", "target", "target_rule", "result",
)  # fmt: skip


@dataclasses.dataclass
class Row:
    """One measurement of the overhead benchmark (a JSON row, typed).

    Attributes:
      size, problem, points_per_term, layers: where it ran.
      method: a library method, or a reference label (``JACREV`` ...).
      kind: ``"loss-value"``, ``"gradient"`` or ``"reference"``.
      update_every: K (an int), ``"none"`` (a chunk with no update due) or None.
      chunk: steps per timed call; settings: how the method was built.
      mode: ``"measured"``, ``"amortised"`` or ``"not run"``.
      updates_per_chunk: update steps in a timed chunk (gradient rows).
      compile_s_plain, compile_s_method: compile times (s).
      temp_mib_plain, temp_mib_method: the compiled programs' temporary buffers.
      flops_always_vs_plain, flops_conditional_vs_plain: matrix-product FLOPs
        relative to the plain step's, always run / inside ``lax.cond`` branches.
      ratio ... repeats: the fields of :func:`benchmarks.timing.summarise`.
      peak_device_mib: peak device memory so far, where reported.
      note: why a row did not run, or how it was computed.
      amortised: the row is ``r0 + (c - r0) / K``.
      update_us, expected_ratio: a loss-value method's update timed alone, and
        the ratio it implies.
      attempts: the first measurements of a row that was measured again.
      target, target_rule, result: the judgement.
    """

    size: str
    problem: str
    points_per_term: int
    layers: list
    method: str
    kind: str
    update_every: Any
    chunk: int
    settings: str = "defaults"
    mode: str = "measured"
    updates_per_chunk: int | None = None
    compile_s_plain: float | None = None
    compile_s_method: float | None = None
    temp_mib_plain: float | None = None
    temp_mib_method: float | None = None
    flops_always_vs_plain: float | None = None
    flops_conditional_vs_plain: float | None = None
    ratio: float | None = None
    ratio_of_medians: float | None = None
    pair_ratios: list | None = None
    clock: str | None = None
    pair_q25: float | None = None
    pair_q75: float | None = None
    pair_min: float | None = None
    pair_max: float | None = None
    ratio_wall: float | None = None
    ratio_cpu_time: float | None = None
    base_ms: float | None = None
    method_ms: float | None = None
    base_ms_q25_q75: list | None = None
    repeats: int | None = None
    peak_device_mib: float | None = None
    note: str | None = None
    amortised: bool = False
    update_us: float | None = None
    expected_ratio: float | None = None
    attempts: list | None = None
    target: float | None = None
    target_rule: str | None = None
    result: str | None = None

    def set(self, **fields: Any) -> Row:
        """Sets ``fields`` (names of this class's attributes only); returns self."""
        for name, value in fields.items():
            if name not in _FIELDS:
                raise TypeError(f"Row has no field {name!r}")
            setattr(self, name, value)
        return self

    @property
    def measured(self) -> bool:
        """Whether the row has a ratio (measured or amortised)."""
        return self.ratio is not None

    def to_json(self) -> dict:
        """The JSON row: ``ALWAYS`` fields, and the others that are set."""
        out = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if name in ALWAYS or not (value is None or value is False):
                out[name] = value
        return out

    @classmethod
    def from_json(cls, row: dict) -> Row:
        """A row of a saved report (older ones lack some fields: left unset)."""
        return cls(**{k: v for k, v in row.items() if k in _FIELDS})


_FIELDS = tuple(f.name for f in dataclasses.fields(Row))


def find(rows: list[Row], method: str, every: Any) -> Row | None:
    """The row of ``method`` at ``update_every = every``, if any."""
    for row in rows:
        if row.method == method and row.update_every == every:
            return row
    return None


def reference_of(method: str) -> str:
    """The reference row a gradient method's K = 1 cost is judged against."""
    return REFERENCES.get(method, JACREV)


def amortise(rows: list[Row], row: Row) -> None:
    """Fills ``row`` (K > chunk) as ``r0 + (c - r0) / K`` from its K = 1 and r0 rows."""
    c = find(rows, row.method, 1)
    r0 = find(rows, row.method, "none")
    if not (c and r0 and c.measured and r0.measured):
        row.set(mode="not run", note="needs the K = 1 and no-update rows")
        return
    k = row.update_every
    for name in ("ratio", "ratio_of_medians", "ratio_wall", "ratio_cpu_time"):
        at_1, at_none = getattr(c, name), getattr(r0, name)
        if at_1 is not None and at_none is not None:
            setattr(row, name, at_none + (at_1 - at_none) / k)
    row.set(
        mode="amortised",
        clock=c.clock,
        base_ms=r0.base_ms,
        method_ms=r0.method_ms + (c.method_ms - r0.method_ms) / k,
        note="amortised: r0 + (c - r0) / K from the K = 1 and no-update rows",
    )


def judge(rows: list[Row], loss_value_target: float) -> None:
    """Sets each row's target and PASS/MISS (see ``benchmarks/overhead.py``)."""
    for row in rows:
        if row.amortised:
            amortise(rows, row)
        target, rule = None, None
        every = row.update_every
        if row.kind == "loss-value":
            target, rule = loss_value_target, f"<= {loss_value_target}"
        elif row.kind == "gradient" and every == 1:
            label = reference_of(row.method)
            ref = find(rows, label, None)
            if ref and ref.measured:
                target = 1.25 * ref.ratio
                rule = f"<= 1.25 x {label.split(' ')[0]}"
        elif row.kind == "gradient" and every == "none":
            target, rule = 1.01, "<= 1.01"
        elif row.kind == "gradient":
            c = find(rows, row.method, 1)
            if c and c.measured:
                target = 1.0 + (c.ratio - 1.0) / every + 0.01
                rule = "<= 1 + (c - 1)/K + 0.01"
        row.set(target=target, target_rule=rule)
        if target is None or not row.measured:
            row.result = "n/a" if row.kind != "reference" else "reference"
        else:
            row.result = "PASS" if row.ratio <= target else "MISS"


def line(row: Row, prefix: str = "") -> str:
    """One log line for ``row``."""
    every = "" if row.update_every is None else f" K={row.update_every}"
    if not row.measured:
        return f"  {prefix}{row.method}{every}: {row.note or row.mode}"
    nan = float("nan")
    q25 = nan if row.pair_q25 is None else row.pair_q25
    q75 = nan if row.pair_q75 is None else row.pair_q75
    return (
        f"  {prefix}{row.method}{every}: ratio {row.ratio:.3f} "
        f"[{q25:.3f}, {q75:.3f}] "
        f"({row.base_ms:.2f} -> {row.method_ms:.2f} ms/step)"
    )
