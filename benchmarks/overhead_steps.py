"""The training steps the overhead benchmark times against each other.

The plain step (the plain sum of the losses and the bare optimizer), the step of
``benchmarks/train.py`` with a weighting method or a gradient aggregator
(:func:`method_step`), and the
reference steps that compute per-term gradients or per-point Jacobian rows
directly on top of the plain step (the cost a gradient-based method is judged
against). Each is ``(step, carry)`` for ``lax.scan``: ``step(carry, key)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks.methods import Aggregator
from benchmarks.problems import MLP, get_problem
from benchmarks.train import weighted_step


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


def make_task(problem_name: str, size: Any, seed: int = 0) -> Task:
    """The problem's loss, residuals and sampler on ``size``'s network and points.

    ``size``: anything with ``layers`` (MLP widths) and ``points`` (per term), an
    overhead ``Size``. The optimizer is the problem's quick preset's.
    """
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


def method_step(
    task: Task, method: oil.WeightingMethod | Aggregator
) -> tuple[Callable, Any]:
    """The training step of ``benchmarks/train.py`` with ``method``: a term
    weighting, or a gradient aggregator chained in front of the optimizer."""
    if isinstance(method, Aggregator):
        tx = optax.chain(method.transform, task.optimizer)
        step = weighted_step(
            tx, task.loss_fn, task.residual_fn, task.sample, aggregator=True
        )
        return step, (task.params, tx.init(task.params))
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
