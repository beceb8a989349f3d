r"""A whole L-BFGS phase on weighted losses, under one policy.

L-BFGS builds its curvature memory from gradient differences of *one*
function, and its line search compares values of *one* function; a weighting
that moves under it breaks both. :func:`run_lbfgs` runs a phase on one fixed
objective at a time: frozen weights, weights refreshed at chosen iterations
with the L-BFGS state reset, or the log objective
(:func:`optax_invloss.log_objective`). A step whose line search failed is
rejected, so the objective of a phase never rises. The guide (which policy
when, and the recipe) is docs/guides/lbfgs.md.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks, _line_search, _nnx, _objectives
from optax_invloss._line_search import WEIGHT_RTOL  # noqa: F401 (the old name)

LossFn = Callable[[Any], Any]  # params -> pytree of scalar losses
POLICIES = ("frozen", "refreshed", "log")
# A rejected step is retried once from a fresh L-BFGS memory (the same iterate,
# the line search starting again from a step of 1); a second rejection in a row
# would repeat the same computation, so the phase stops there (until a refresh
# changes the objective).
STOP_AFTER_REJECTIONS = 2


class LBFGSInfo(NamedTuple):
    """Per-iteration record of :func:`run_lbfgs` (arrays of length ``iterations``).

    Attributes:
      objective: the phase's objective at the iterate each iteration starts
        from, as the line search saw it (after a refresh: under the new
        weights).
      objective_after: the same objective (same weights) at the iterate kept
        by the iteration: the new iterate, or the old one where the step was
        rejected. ``objective_after[k] <= objective[k]`` always.
      linesearch_failed: True where the line search ended without a step of
        sufficient decrease (its ``decrease_error`` > 0). Always False for an
        optimizer without a line search.
      rejected: True where the step was not taken: its line search failed or
        it did not lower the objective (NaN included). The iterate was kept
        and the L-BFGS memory reset. ``rejected.sum()`` counts them.
      stopped: True where the iteration did nothing because the phase had
        stopped after ``STOP_AFTER_REJECTIONS`` (2) rejections in a row; under
        ``"refreshed"``, a refresh that changes the weights starts it again.
      refreshed: True where the weights were recomputed before the iteration
        and came out different: the objective changed there. L-BFGS was reset
        (or, for a change of at most ``weight_rtol``, its cached value).
    """

    objective: jax.Array  # shape=(iterations,), the objective's dtype.
    objective_after: jax.Array  # shape=(iterations,), the objective's dtype.
    linesearch_failed: jax.Array  # shape=(iterations,), dtype=bool.
    rejected: jax.Array  # shape=(iterations,), dtype=bool.
    stopped: jax.Array  # shape=(iterations,), dtype=bool.
    refreshed: jax.Array  # shape=(iterations,), dtype=bool.


def _count(state, name: str) -> int:
    return len(optax.tree.get_all_with_path(state, name))


def _update_every(method) -> int | None:
    """The ``update_every`` a factory gave ``method.update`` (through wrappers)."""
    update = getattr(method, "update", None)
    try:
        names = inspect.getclosurevars(update).nonlocals
    except TypeError:
        return None
    if isinstance(names.get("update_every"), int):
        return names["update_every"]
    inner = names.get("method")
    return _update_every(inner) if isinstance(inner, _base.WeightingMethod) else None


def _check_policy(policy, method, refresh_every, weighting_state, iterations):
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy = {policy!r}.")
    _checks.check_every("iterations", iterations)
    if policy == "refreshed":
        if method is None:
            raise ValueError(
                "policy='refreshed' recomputes the weights with the method's update: "
                "pass method=... (the weighting method the state belongs to)."
            )
        _checks.check_every("refresh_every", refresh_every)
        every = _update_every(method)
        if every is not None and every > 1:
            raise ValueError(
                f"policy='refreshed' with refresh_every={refresh_every} cannot "
                f"refresh as asked: the method was built with update_every={every}, "
                f"so it recomputes its weights on one call in {every} and holds "
                f"them on the others (a refresh every {every * refresh_every} "
                "iterations). Pass the same method built with update_every=1 for "
                "this phase (its state is the same), or a larger refresh_every."
            )
    elif refresh_every is not None:
        raise ValueError(
            f"refresh_every is only used with policy='refreshed', got policy = "
            f"{policy!r} and refresh_every = {refresh_every!r}."
        )
    if policy != "log" and weighting_state is None:
        raise ValueError(
            f"policy={policy!r} needs the weights: pass weighting_state (a weighting "
            "state, or an optimizer state that holds one)."
        )


def _check_method_inputs(method_inputs, policy) -> tuple:
    """``method_inputs`` as a sorted tuple of items (a static, hashable argument)."""
    if method_inputs is None:
        return ()
    if policy != "refreshed":
        raise ValueError(
            "method_inputs is only used with policy='refreshed', got policy = "
            f"{policy!r}."
        )
    items = tuple(sorted(dict(method_inputs).items()))
    for name, value in items:
        if name in ("params", "loss_fn"):
            raise ValueError(
                f"method_inputs must not hold {name!r}: run_lbfgs passes params= "
                "and loss_fn= to the method itself."
            )
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"method_inputs[{name!r}] must be hashable (a function of the "
                f"parameters, say), got {type(value).__name__}."
            ) from None
    return items


def run_lbfgs(
    loss_fn: LossFn,
    params: Any,
    weighting_state: Any = None,
    *,
    iterations: int,
    policy: str = "frozen",
    method: _base.WeightingMethod | None = None,
    refresh_every: int | None = None,
    eps: float = 1e-12,
    optimizer: optax.GradientTransformationExtraArgs | None = None,
    method_inputs: Mapping[str, Callable] | None = None,
    weight_rtol: float = WEIGHT_RTOL,
) -> tuple[Any, Any, LBFGSInfo]:
    r"""Runs ``iterations`` steps of L-BFGS on weighted losses, under one policy.

    The whole phase is one jitted ``lax.scan``. Each iteration builds the
    objective (:func:`optax_invloss.weighted_objective` with the current
    weights, or :func:`optax_invloss.log_objective`), takes value and gradient
    with :func:`optax.value_and_grad_from_state` (reusing the line search's
    last evaluation), and calls ``optimizer.update`` with ``value``, ``grad``
    and ``value_fn`` of that same objective. The policies:

    - ``"frozen"``: the weights of ``weighting_state`` for every iteration.
    - ``"refreshed"``: before iterations ``N, 2N, ...`` (``refresh_every =
      N``) call ``method.update`` on the losses at the current iterate; if the
      weights change by more than ``weight_rtol``,
      :func:`optax_invloss.reset_lbfgs` the optimizer state (a smaller change
      clears only the cached value). The method sees only these losses (an
      ``ema_decay`` averages over refreshes). It is called with the keyword
      inputs ``params=`` and ``loss_fn=`` and those in ``method_inputs``;
      methods ignore inputs they do not use. A method built with
      ``update_every`` > 1 would hold its weights on most refreshes: that is
      an error; pass the method built with ``update_every=1`` (its state is the
      same).
    - ``"log"``: minimise :math:`\sum_i \log(L_i + \epsilon)`; the weights
      are not used and ``weighting_state`` comes back as given.

    Failed line searches. Optax's line search returns its last trial step even
    when it found no sufficient decrease. Here such a step, or any step that
    does not lower the objective, is *rejected*: the iterate is kept, the
    L-BFGS memory and line-search state are reset, and the next iteration
    retries from there. After ``STOP_AFTER_REJECTIONS`` (2) rejections in a row
    the phase stops: the remaining iterations do nothing (``info.stopped``),
    until a refresh changes the weights. So on each fixed objective (a frozen
    or log phase, each stretch between refreshes) the objective never rises.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of scalar loss terms on a
        fixed batch (L-BFGS needs a deterministic objective); for a Flax NNX
        model, ``loss_fn(model)``. The objective is taken in the parameters'
        (lowest) dtype, as the line search needs. It is a static argument of
        the compiled loop: pass the same function object again to reuse the
        compiled program (for the next phase, or the next seed).
      params: the starting parameters, any pytree of float arrays, or a Flax
        ``nnx.Module``: then its ``nnx.Param`` variables are trained, written
        back into the module in place, and the module is returned.
      weighting_state: the weighting state to start from: a method's state, an
        Optax state that holds one (from :func:`optax_invloss.with_weighting`),
        or a Flax ``nnx.Optimizer`` built on one. Not needed for ``"log"``.
      iterations: number of L-BFGS iterations, an integer >= 1.
      policy: ``"frozen"``, ``"refreshed"`` or ``"log"``.
      method: the weighting method; needed for ``"refreshed"``.
      refresh_every: iterations between refreshes; ``"refreshed"`` only.
      eps: the :math:`\epsilon` of ``"log"``; >= 0.
      optimizer: a line-search optimizer; ``optax.lbfgs()`` by default. Pass the
        plain optimizer, not one built with ``with_weighting``.
      method_inputs: ``"refreshed"`` only: more keyword inputs for
        ``method.update``, such as ``{"residual_fn": residual_fn}`` for
        :func:`optax_invloss.ntk_weights` (for a model, functions of the model).
        Static arguments of the compiled loop like ``loss_fn``.
      weight_rtol: ``"refreshed"``: the relative change of a weight above which
        a refresh resets the L-BFGS memory; >= 0.

    Returns:
      ``(params, weighting_state, info)``: the final parameters (the same
      ``nnx.Module``, updated, if one was given), the weighting state (the
      method's own state, as found in ``weighting_state``; updated by the
      refreshes), and an :class:`LBFGSInfo`.

    Examples:
      >>> import jax.numpy as jnp, optax_invloss
      >>> loss_fn = lambda p: {"a": jnp.sum((p - 1.0) ** 2) + 1e-3,
      ...                      "b": 0.1 * jnp.sum((p + 1.0) ** 2) + 1e-3}
      >>> method = optax_invloss.inverse_loss(min_weight=0.0)
      >>> params = jnp.asarray([0.5, 0.2])
      >>> _, state = method.update(loss_fn(params), method.init(loss_fn(params)))
      >>> params, state, info = optax_invloss.run_lbfgs(
      ...     loss_fn, params, state, iterations=12,
      ...     policy="refreshed", method=method, refresh_every=4)
      >>> print(info.refreshed.astype(int))
      [0 0 0 0 1 0 0 0 1 0 0 0]
      >>> print(int(state.weighting_step))  # the first update, then 2 refreshes
      3

    References:
      Liu and Nocedal, `On the limited memory BFGS method for large scale
      optimization <https://doi.org/10.1007/BF01589116>`_, Math. Program. 45,
      1989.

      Nocedal and Wright, `Numerical Optimization
      <https://doi.org/10.1007/978-0-387-40065-5>`_, Algorithms 3.5, 3.6 (zoom
      line search) and 7.4, 7.5 (L-BFGS), 2006.
    """
    _check_policy(policy, method, refresh_every, weighting_state, iterations)
    inputs = _check_method_inputs(method_inputs, policy)
    _line_search.check_weight_rtol(weight_rtol)
    log = policy == "log"
    if log:
        _objectives.log_objective(loss_fn, eps=eps)  # validates eps
    wstate = None if log else _base.find_weighting_state(weighting_state)
    model, rest = None, None
    if _nnx.is_module(params):
        model = params
        graphdef, params, rest = _nnx.split_model(model)
        loss_fn = _nnx.ModelFn(loss_fn, graphdef)
        inputs = tuple((k, _nnx.ModelFn(fn, graphdef)) for k, fn in inputs)
    params, wstate, info = _run(
        params,
        wstate,
        rest,
        loss_fn=loss_fn,
        iterations=iterations,
        policy=policy,
        method=None if log else method,
        refresh_every=None if log else refresh_every,
        eps=eps,
        optimizer=optimizer,
        method_inputs=inputs,
        weight_rtol=weight_rtol,
    )
    if model is not None:
        params = _nnx.write_back(model, params)
    # The log objective uses no weights: the state comes back as given.
    return params, weighting_state if log else wstate, info


@functools.partial(
    jax.jit,
    static_argnames=(
        "loss_fn",
        "iterations",
        "policy",
        "method",
        "refresh_every",
        "eps",
        "optimizer",
        "method_inputs",
        "weight_rtol",
    ),
)
def _run(
    params,
    wstate,
    rest,
    *,
    loss_fn,
    iterations,
    policy,
    method,
    refresh_every,
    eps,
    optimizer,
    method_inputs,
    weight_rtol,
):
    """The scan of :func:`run_lbfgs`, compiled once per set of static settings."""
    if rest is not None:  # a Flax NNX model: functions of the model, bound
        loss_fn = loss_fn.bind(rest)
        method_inputs = tuple((k, fn.bind(rest)) for k, fn in method_inputs)
    if optimizer is None:
        optimizer = optax.lbfgs()
    optimizer = optax.with_extra_args_support(optimizer)
    opt_state = optimizer.init(params)
    if _count(opt_state, "loss_weights"):
        raise ValueError(
            "run_lbfgs takes the plain optimizer (e.g. optax.lbfgs()), not one "
            "built with with_weighting: it handles the weights itself."
        )
    cached = _count(opt_state, "value") == 1 and _count(opt_state, "grad") == 1
    checked = _count(opt_state, "decrease_error") == 1

    # The line search keeps its values in the parameters' dtype: float64 losses
    # (points sampled with x64 on) of float32 parameters are cast to it.
    dtype = optax.tree.dtype(params, "lowest")

    def objective(wstate):
        if policy == "log":
            fn = _objectives.log_objective(loss_fn, eps=eps)
        else:
            fn = _objectives.weighted_objective(loss_fn, wstate.loss_weights)
        return lambda p: jnp.asarray(fn(p)).astype(dtype)

    def refresh(params, opt_state, wstate):
        losses = loss_fn(params)
        _, new = method.update(
            losses, wstate, params=params, loss_fn=loss_fn, **dict(method_inputs)
        )
        opt_state, changed = _line_search.reset_for_new_weights(
            opt_state, wstate.loss_weights, new.loss_weights, weight_rtol
        )
        return opt_state, new, changed

    def step(params, opt_state, value_fn):
        if cached:
            value, grad = optax.value_and_grad_from_state(value_fn)(
                params, state=opt_state
            )
        else:
            value, grad = jax.value_and_grad(value_fn)(params)
        updates, new_state = optimizer.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=value_fn
        )
        new_params = optax.apply_updates(params, updates)
        if cached:
            after = optax.tree.get(new_state, "value")
        else:
            after = value_fn(new_params)
        after = jnp.asarray(after, value.dtype)
        failed = jnp.asarray(False)
        if checked:
            failed = optax.tree.get(new_state, "decrease_error") > 0
        # Keep the step only if it lowered the objective (NaN fails this too).
        rejected = failed | ~(after <= value)
        params = optax.tree.where(rejected, params, new_params)
        opt_state = optax.tree.where(
            rejected, _line_search.reset_lbfgs(opt_state), new_state
        )
        after = jnp.where(rejected, value, after)
        return params, opt_state, (value, after, failed, rejected)

    def idle(params, opt_state, value_fn):
        value = value_fn(params)
        no = jnp.asarray(False)
        return params, opt_state, (value, value, no, no)

    def body(carry, k):
        params, opt_state, wstate, rejections = carry
        changed = jnp.asarray(False)
        if policy == "refreshed":
            due = (k > 0) & (k % refresh_every == 0)
            opt_state, wstate, changed = jax.lax.cond(
                due,
                refresh,
                lambda p, s, w: (s, w, jnp.asarray(False)),
                params,
                opt_state,
                wstate,
            )
            rejections = jnp.where(changed, 0, rejections)
        value_fn = objective(wstate)
        stopped = rejections >= STOP_AFTER_REJECTIONS
        params, opt_state, (value, after, failed, rejected) = jax.lax.cond(
            stopped,
            functools.partial(idle, value_fn=value_fn),
            functools.partial(step, value_fn=value_fn),
            params,
            opt_state,
        )
        rejections = jnp.where(rejected, rejections + 1, jnp.zeros_like(rejections))
        rejections = jnp.where(stopped, STOP_AFTER_REJECTIONS, rejections)
        record = (value, after, failed, rejected, stopped, changed)
        return (params, opt_state, wstate, rejections), record

    steps = jnp.arange(iterations)
    carry = (params, opt_state, wstate, jnp.zeros((), jnp.int32))
    (params, _, wstate, _), record = jax.lax.scan(body, carry, steps)
    return params, wstate, LBFGSInfo(*record)
