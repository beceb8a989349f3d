"""Where the matrix products of a compiled XLA program sit: always run, or on demand.

A training step's cost is its matrix products (``dot``, ``convolution``): the
forward and backward passes through the network. A weighting method that adds no
pass leaves their count alone; a gradient-based method with ``update_every = K``
must put its extra passes inside a conditional (``lax.cond``) that runs only on
update steps. :func:`dot_stats` reads the optimised HLO text of a compiled program
(``jax.jit(f).lower(...).compile().as_text()``) and splits its products into those
reached from the entry computation without passing through a branch of a
``conditional`` (run every time) and those inside a branch (run when it is taken).

Counts are static: an op inside a ``while`` body (``lax.scan``) counts once, so two
programs built the same way (same scan length) compare like for like.
"""

from __future__ import annotations

import dataclasses
import math
import re

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OP = re.compile(r"^\s*([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(
    r"\b(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+)"
    r"|false_computation=%?([\w.\-]+))"
)
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


@dataclasses.dataclass(frozen=True)
class DotStats:
    """Matrix products of a compiled program, split by whether they always run.

    Attributes:
      dots: ``dot`` and ``convolution`` ops run on every execution.
      flops: their floating-point operations (2 per multiply-add; convolutions are
        counted as ops but their FLOPs are not estimated).
      conditional_dots: ops inside a branch of a ``conditional``.
      conditional_flops: their FLOPs (all branches added up).
    """

    dots: int
    flops: float
    conditional_dots: int
    conditional_flops: float


def _dims(shape: str) -> tuple[int, ...] | None:
    match = _ARRAY.match(shape)
    if match is None:
        return None
    return tuple(int(d) for d in match.group(1).split(",") if d)


def _instruction(line: str) -> tuple[str, str, str, str] | None:
    """``(name, result type, op, rest of the line)`` of one HLO instruction."""
    named = _NAME.match(line)
    if named is None:
        return None
    rest = line[named.end() :]
    if rest.startswith("("):  # a tuple type: up to the matching parenthesis
        depth, end = 0, 0
        while True:
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
            if depth == 0 or end == len(rest):
                break
        shape, rest = rest[:end], rest[end:]
    else:
        shape, _, rest = rest.partition(" ")
    op = _OP.match(rest)
    if op is None:
        return None
    return named.group(1), shape, op.group(1), op.group(2)


def _parse(text: str) -> tuple[str, dict]:
    """``(entry name, {computation: [(name, shape, op, rest), ...]})``."""
    computations: dict[str, list] = {}
    entry, current = None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        instruction = _instruction(line)
        if instruction:
            computations[current].append(instruction)
    if entry is None:
        raise ValueError("no ENTRY computation found: pass compiled HLO text")
    return entry, computations


def _dot_flops(shape: str, rest: str, shapes: dict) -> float:
    result = _dims(shape)
    lhs_name = rest.split(",")[0].strip().lstrip("%").rstrip(")")
    lhs = shapes.get(lhs_name)
    contracting = _CONTRACTING.search(rest)
    if result is None or lhs is None or contracting is None:
        return 0.0
    axes = [int(a) for a in contracting.group(1).split(",") if a]
    return 2.0 * math.prod(result) * math.prod(lhs[a] for a in axes)


def dot_stats(hlo_text: str, min_flops: float = 0.0) -> DotStats:
    """Counts the matrix products of compiled HLO text, always-run vs conditional.

    Args:
      hlo_text: ``compiled.as_text()`` of a ``jax.jit(...).lower(...).compile()``.
      min_flops: products of fewer FLOPs are left out: a weighting method's
        arithmetic on its few loss values (a 5-vector dot product, say) is not a
        pass through the network.

    Returns:
      A :class:`DotStats`. A computation called from several places is counted at
      each call site.
    """
    entry, computations = _parse(hlo_text)
    totals = {False: [0, 0.0], True: [0, 0.0]}

    def visit(name: str, conditional: bool, depth: int) -> None:
        if depth > 200:
            raise ValueError("HLO call graph too deep (a cycle?)")
        instructions = computations.get(name, [])
        shapes = {n: _dims(s) for n, s, _, _ in instructions}
        for _, shape, op, rest in instructions:
            if op == "convolution":
                totals[conditional][0] += 1
            elif op == "dot":
                flops = _dot_flops(shape, rest, shapes)
                if flops >= min_flops:
                    totals[conditional][0] += 1
                    totals[conditional][1] += flops
            for _, callee in _CALLED.findall(rest):
                visit(callee, conditional, depth + 1)
            for listed, true_branch, false_branch in _BRANCHES.findall(rest):
                callees = [c.strip().lstrip("%") for c in listed.split(",")]
                callees += [true_branch, false_branch]
                for callee in filter(None, callees):
                    visit(callee, True, depth + 1)

    visit(entry, False, 0)
    return DotStats(
        dots=totals[False][0],
        flops=totals[False][1],
        conditional_dots=totals[True][0],
        conditional_flops=totals[True][1],
    )
