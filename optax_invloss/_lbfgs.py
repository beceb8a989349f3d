r"""L-BFGS with weighted losses: one fixed objective at a time.

L-BFGS builds its curvature memory from differences of gradients of *one*
function, and its line search compares values of *one* function. A loss
weighting that moves under it breaks both: the pairs :math:`(s_k, y_k)` mix
gradients of different objectives, and with
:func:`optax.value_and_grad_from_state` the line search compares a value cached
under the old weights with values computed under the new ones. This module
makes the choice deliberate. For any weighting method, an L-BFGS phase runs
under one of three policies:

- ``"frozen"``: the weights are fixed for the whole phase (usually the last
  weights of an Adam phase). The objective :math:`\sum_i w_i L_i` is one fixed
  function, which is what L-BFGS assumes.
- ``"refreshed"``: every ``refresh_every`` iterations the weights are
  recomputed with the method's ``update`` from the current losses; whenever
  they change by more than ``WEIGHT_RTOL`` (1e-4, relative, in any term), the
  L-BFGS memory and the line search's cached value and gradient are reset
  (:func:`reset_lbfgs`), so that each stretch between refreshes is a plain
  L-BFGS run on one fixed objective. A smaller change (the last bits of a
  capped projection, an average that has settled) clears only the cached
  value and gradient: the curvature pairs stay, and the line search still
  compares values of one objective only.
- ``"log"``: for inverse-loss weighting, minimise the fixed objective
  :math:`\sum_i \log(L_i + \epsilon)` (:func:`log_objective`), whose gradient
  points where the inverse-loss weighted gradient points.

Why the log objective. With the stop-gradient weights of the bare inverse-loss
formula, :math:`w_i = (1/L_i) / \sum_j (1/L_j)`,

.. math::

  \nabla \sum_i w_i L_i = \sum_i \frac{1/L_i}{\sum_j 1/L_j} \nabla L_i
  = \Big(\sum_j \frac{1}{L_j}\Big)^{-1} \sum_i \frac{\nabla L_i}{L_i}
  = \Big(\sum_j \frac{1}{L_j}\Big)^{-1} \nabla \sum_i \log L_i .

The two directions agree exactly (for :math:`\epsilon = 0` and no caps); the
lengths differ by the positive factor :math:`(\sum_j 1/L_j)^{-1}`, which
changes from point to point. A line search absorbs such a factor into the step
length (and L-BFGS with ``optax.lbfgs``'s scaled initial preconditioner takes
the same steps on :math:`c f` as on :math:`f` for any constant :math:`c > 0`,
apart from the length of its very first step). So recomputing inverse-loss
weights at every iterate and following the weighted gradient is, up to step
lengths, gradient descent on :math:`\sum_i \log L_i`, and that function is a
fixed objective L-BFGS can minimise directly. Its stationary points are
exactly the points where the re-weighted gradient vanishes.

What :math:`\epsilon` and the method's options change:

- :math:`\epsilon > 0` gives each term the effective weight
  :math:`\propto 1/(L_i + \epsilon)` instead of :math:`1/\max(L_i, \epsilon)`:
  the same to a relative :math:`\epsilon / L_i` while every loss is well above
  :math:`\epsilon`; below it, both stop growing (at :math:`1/\epsilon`). It
  also makes the objective bounded below (:math:`n \log \epsilon`). With
  :math:`\epsilon = 0` a single term that reaches zero sends the objective to
  :math:`-\infty` whatever the others do, the fixed-objective form of the
  runaway mode described in :func:`optax_invloss.inverse_loss`.
- ``min_weight`` / ``max_weight`` caps: while a cap binds, the weighted
  gradient is that of the linear combination with the capped weights, not of
  the log objective; the log objective is the counterpart of the *uncapped*
  formula only, and has no floor that protects a starved term.
- ``ema_decay`` and ``update_every`` make the weights follow averaged or stale
  losses; the log objective always uses the current losses (it is the
  counterpart of ``ema_decay=0, update_every=1``).

Other weighting methods have no such fixed objective: use ``"frozen"`` or
``"refreshed"`` for them.

Which policy. ``"frozen"`` is the default and the common practice. Use
``"refreshed"`` when the weights should keep adapting, with tens of iterations
between refreshes (each refresh restarts L-BFGS from a gradient step). Do not
recompute the weights at every iteration without a reset: on 2D Helmholtz with
the bare formula, the value the line search started from was then off by up to
13 times the objective, and 59 of 600 line searches failed (none with a
refresh every 50 iterations and a reset). The log objective is the bare
formula's and shares its runaway: on the same benchmark L-BFGS drove boundary
terms to 1e-5 to 1e-7 while the PDE residual rose 7 to 53 times; use it only
where the bare formula is known to behave. The numbers and the command are in
``benchmarks/results/lbfgs_policies.md``.

The pieces: :func:`weighted_objective` and :func:`log_objective` build the
``value_fn`` that the line search calls, from the same ``loss_fn`` and weights
that give the gradient; :func:`run_lbfgs` runs a whole phase under one policy
in a single jitted ``lax.scan``; :func:`reset_lbfgs` clears the memory of an
L-BFGS state; :func:`reset_on_new_weights` adds that reset to an optimizer
built with :func:`optax_invloss.with_weighting`, for training loops of your
own (plain Optax or Flax NNX).

Adam, then L-BFGS (the recipe). Train with Adam under a weighting method, read
the weighting state out of the optimizer state, and hand it to
:func:`run_lbfgs`:

>>> import jax, jax.numpy as jnp, optax, optax_invloss
>>> x = jnp.linspace(-1.0, 1.0, 32)
>>> def loss_fn(p):  # a fit and a boundary value, of different scales
...     fit = p["a"] * x + p["b"] * x**3 + p["c"]
...     return {"data": jnp.mean((fit - jnp.sin(2.0 * x)) ** 2),
...             "bc": 1e-2 * (p["a"] + p["b"] + p["c"] - 1.0) ** 2}
>>> params = {"a": jnp.zeros(()), "b": jnp.zeros(()), "c": jnp.zeros(())}
>>> method = optax_invloss.inverse_loss()
>>> tx = optax_invloss.with_weighting(
...     optax.adam(1e-2), method, losses=jax.eval_shape(loss_fn, params))
>>> opt_state = tx.init(params)
>>> @jax.jit
... def adam_step(params, opt_state):
...     weights = optax_invloss.loss_weights(opt_state)
...     value_fn = optax_invloss.weighted_objective(loss_fn, weights)
...     grads = jax.grad(value_fn)(params)
...     updates, opt_state = tx.update(
...         grads, opt_state, params, losses=loss_fn(params))
...     return optax.apply_updates(params, updates), opt_state
>>> for _ in range(200):
...     params, opt_state = adam_step(params, opt_state)
>>> params, weighting_state, info = optax_invloss.run_lbfgs(
...     loss_fn, params, opt_state.weighting_state, iterations=30)
>>> w = optax_invloss.loss_weights(weighting_state)  # frozen: Adam's last weights
>>> print(f"data {float(w['data']):.2f}, bc {float(w['bc']):.2f}")
data 0.05, bc 0.95
>>> print(bool(info.objective_after[-1] < info.objective[0]))
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base

LossFn = Callable[[Any], Any]  # params -> pytree of scalar losses
POLICIES = ("frozen", "refreshed", "log")


# ----------------------------------------------------------------------------------
# Objectives.


def weighted_objective(
    loss_fn: LossFn, weights: _base.Weights
) -> Callable[[Any], jax.Array]:
    r"""The ``value_fn`` :math:`p \mapsto \sum_i w_i L_i(p)` for fixed weights.

    Build the value that the line search calls and the gradient passed to the
    optimizer from this one function, so that both are of the same objective
    with the same weights::

      value_fn = optax_invloss.weighted_objective(loss_fn, weights)
      value, grad = optax.value_and_grad_from_state(value_fn)(params, state=s)
      updates, s = opt.update(grad, s, params, value=value, grad=grad,
                              value_fn=value_fn)

    The weights are held constant (:func:`optax_invloss.weighted_sum` stops
    their gradient). ``value_fn`` takes only the parameters, so the line search
    never needs extra keyword arguments: close over a fixed batch in
    ``loss_fn``.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of scalar loss terms.
      weights: the weights, in the structure of the losses (for example
        ``optax_invloss.loss_weights(opt_state)``).

    Returns:
      ``value_fn(params) -> scalar``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> loss_fn = lambda p: {"pde": p**2, "bc": (p - 1.0) ** 2}
      >>> value_fn = optax_invloss.weighted_objective(
      ...     loss_fn, {"pde": 0.25, "bc": 0.75})
      >>> print(value_fn(jnp.asarray(2.0)))  # 0.25 * 4 + 0.75 * 1
      1.75
    """

    def value_fn(params):
        return _base.weighted_sum(loss_fn(params), weights)

    return value_fn


def log_objective(loss_fn: LossFn, *, eps: float = 1e-12) -> Callable[[Any], jax.Array]:
    r"""The ``value_fn`` :math:`p \mapsto \sum_i \log(L_i(p) + \epsilon)`.

    The fixed objective whose gradient is parallel to the gradient of the
    inverse-loss weighted total: with :math:`w_i = (1/L_i) / \sum_j (1/L_j)`
    held constant,

    .. math::

      \nabla \sum_i w_i L_i
      = \Big(\sum_j \frac{1}{L_j}\Big)^{-1} \nabla \sum_i \log L_i ,

    exactly for :math:`\epsilon = 0` and no caps. :math:`\epsilon > 0` bounds
    the objective below by :math:`n \log \epsilon` and each term's effective
    weight by :math:`1/\epsilon`, as the ``eps`` of
    :func:`optax_invloss.inverse_loss` does; the default is that method's.

    It is the fixed objective of the *bare* formula (no caps), and has the same
    runaway mode: lowering a term that is easy to drive to zero by a factor of
    10 is worth as much as lowering a hard one by 10. On the 2D Helmholtz
    benchmark, L-BFGS on this objective drove the boundary terms to 1e-5 to 1e-7
    and let the PDE residual grow 7 to 53 times
    (``benchmarks/results/lbfgs_policies.md``). Prefer frozen weights unless the
    bare formula is known to behave on your problem.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of non-negative scalar
        loss terms.
      eps: added to each loss inside the logarithm. Must be >= 0.

    Returns:
      ``value_fn(params) -> scalar``, in the promoted dtype of the losses.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optax_invloss
      >>> loss_fn = lambda p: {"pde": p**2, "bc": 0.01 * (p - 1.0) ** 2}
      >>> value_fn = optax_invloss.log_objective(loss_fn, eps=0.0)
      >>> print(f"{float(value_fn(jnp.asarray(2.0))):.4f}")  # log 4 + log 0.01
      -3.2189
    """
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got eps = {eps!r}.")

    def value_fn(params):
        losses = loss_fn(params)
        _base.check_losses(losses, argname="loss_fn(params)")
        return sum(jnp.log(loss + eps) for loss in jax.tree.leaves(losses))

    return value_fn


# ----------------------------------------------------------------------------------
# Resetting an L-BFGS state.


def _has_value_cache(x) -> bool:
    fields = getattr(x, "_fields", ())
    return isinstance(x, tuple) and "value" in fields and "grad" in fields


def _is_resettable(x) -> bool:
    return isinstance(x, optax.ScaleByLBFGSState) or _has_value_cache(x)


def _reset_one(x):
    if isinstance(x, optax.ScaleByLBFGSState):
        # Exactly the state init gives: count 0, no curvature pairs.
        return jax.tree.map(jnp.zeros_like, x)
    if _has_value_cache(x):
        fresh = {
            "value": jnp.full_like(x.value, jnp.inf),
            "grad": jax.tree.map(jnp.zeros_like, x.grad),
        }
        if "learning_rate" in x._fields:  # the line searches start from 1
            fresh["learning_rate"] = jnp.ones_like(x.learning_rate)
        return x._replace(**fresh)
    return x


def reset_lbfgs(opt_state: Any) -> Any:
    """An optimizer state with its L-BFGS memory and line-search cache cleared.

    Every ``optax.ScaleByLBFGSState`` in ``opt_state`` is set to what
    ``optax.scale_by_lbfgs`` ``init`` gives (``count`` 0 and zero curvature
    pairs, so no pair from before the reset is used again), and every state with
    ``value`` and ``grad`` fields (the line searches of ``optax.lbfgs``) gets
    ``value = inf``, ``grad = 0`` and ``learning_rate = 1``. Those two fields
    are what :func:`optax.value_and_grad_from_state` reads; with an infinite
    value it recomputes value and gradient with the ``value_fn`` it is given, so
    the first line search after the reset compares values of the new objective
    only. Everything else (a weighting state inside it, for instance) is left
    alone. Only the structure of the state is inspected, so this works under
    ``jax.jit``; for a reset on a traced condition use
    ``optax.tree.where(flag, reset_lbfgs(s), s)``.

    Args:
      opt_state: an Optax optimizer state: of ``optax.lbfgs()``, of an
        optimizer built with :func:`optax_invloss.with_weighting`, or any state
        holding one.

    Returns:
      The state, same structure and dtypes, with the L-BFGS parts reset.

    Examples:
      >>> import jax.numpy as jnp, optax, optax_invloss
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> opt = optax.lbfgs()
      >>> x = jnp.zeros(2)
      >>> state = opt.init(x)
      >>> value, grad = optax.value_and_grad_from_state(f)(x, state=state)
      >>> _, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
      >>> state = optax_invloss.reset_lbfgs(state)
      >>> print(int(state[0].count), float(optax.tree.get(state, "value")))
      0 inf
    """
    return jax.tree.map(_reset_one, opt_state, is_leaf=_is_resettable)


# Weights that moved by at most this fraction of themselves (rounding in a capped
# projection, an EMA that has settled) keep the L-BFGS memory: only the cached
# value and gradient are dropped, so the line search never compares values of
# two objectives. A larger change resets L-BFGS completely.
WEIGHT_RTOL = 1e-4


def _reset_cache(x):
    if _has_value_cache(x):
        return x._replace(
            value=jnp.full_like(x.value, jnp.inf),
            grad=jax.tree.map(jnp.zeros_like, x.grad),
        )
    return x


def _reset_for_new_weights(
    opt_state: Any, old: _base.Weights, new: _base.Weights
) -> tuple[Any, jax.Array]:
    """``opt_state`` made consistent with the objective of the ``new`` weights.

    Unchanged weights: the state as it is. A change of at most ``WEIGHT_RTOL``
    (relative, per term): the cached value and gradient are cleared, the
    curvature pairs kept. A larger change: :func:`reset_lbfgs`. Returns the state
    and whether the weights changed at all (the objective is a new function).
    """
    a, b = _base.stack(old), _base.stack(new)
    moved = jnp.any(a != b)
    large = jnp.any(jnp.abs(b - a) > WEIGHT_RTOL * jnp.abs(a))
    cleared = jax.tree.map(_reset_cache, opt_state, is_leaf=_has_value_cache)
    opt_state = optax.tree.where(moved, cleared, opt_state)
    return optax.tree.where(large, reset_lbfgs(opt_state), opt_state), moved


def reset_on_new_weights(
    optimizer: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Resets L-BFGS whenever the weights of a ``with_weighting`` optimizer change.

    ``optimizer`` is an optimizer built with
    :func:`optax_invloss.with_weighting` around ``optax.lbfgs()`` (or another
    line-search optimizer). After each ``update``, if the weights in the state
    differ from the weights before it by more than ``WEIGHT_RTOL`` (1e-4,
    relative, in any term), the state is passed through :func:`reset_lbfgs`:
    the next step starts a fresh L-BFGS run on the new objective, with no
    curvature pairs and no cached value from the old one. A smaller change
    clears only the cached value and gradient (they belong to the old
    objective) and keeps the curvature pairs.
    This is the ``"refreshed"`` policy of :func:`run_lbfgs` for training loops
    of your own (plain Optax, or Flax ``nnx.Optimizer``); the weighting method's
    own schedule decides when the weights change, so give it one
    (``inverse_loss(update_every=50)``, say): weights that change at every step
    reset L-BFGS at every step, which leaves a steepest-descent line search.

    In each step, compute value and gradient with the weights *in the state*
    (:func:`optax_invloss.loss_weights`), and pass the same objective as
    ``value_fn``; the state, the updates and the keyword arguments are
    otherwise exactly those of ``optimizer``.

    Args:
      optimizer: an optimizer from :func:`optax_invloss.with_weighting`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the same state.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optax_invloss
      >>> def loss_fn(p):
      ...     return {"a": jnp.sum((p - 1.0) ** 2), "b": 0.1 * jnp.sum(p**2)}
      >>> params = jnp.asarray([2.0, -1.0])
      >>> tx = optax_invloss.reset_on_new_weights(optax_invloss.with_weighting(
      ...     optax.lbfgs(), optax_invloss.inverse_loss(update_every=5),
      ...     losses=jax.eval_shape(loss_fn, params)))
      >>> opt_state = tx.init(params)
      >>> @jax.jit
      ... def step(params, opt_state):
      ...     value_fn = optax_invloss.weighted_objective(
      ...         loss_fn, optax_invloss.loss_weights(opt_state))
      ...     value, grad = optax.value_and_grad_from_state(value_fn)(
      ...         params, state=opt_state)
      ...     updates, opt_state = tx.update(
      ...         grad, opt_state, params, value=value, grad=grad,
      ...         value_fn=value_fn, losses=loss_fn(params))
      ...     return optax.apply_updates(params, updates), opt_state
      >>> for _ in range(3):
      ...     params, opt_state = step(params, opt_state)
      >>> # The weights changed at the first step, so L-BFGS restarted there.
      >>> print(int(opt_state.optimizer_state[0].count))
      2
    """

    def init_fn(params):
        state = optimizer.init(params)
        _base.find_weighting_state(state)  # raises if there is none
        return state

    def update_fn(updates, state, params=None, **extra_args):
        old = _base.find_weighting_state(state).loss_weights
        updates, new_state = optimizer.update(updates, state, params, **extra_args)
        new = _base.find_weighting_state(new_state).loss_weights
        new_state, _ = _reset_for_new_weights(new_state, old, new)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------------
# A whole L-BFGS phase.


class LBFGSInfo(NamedTuple):
    """Per-iteration record of :func:`run_lbfgs` (arrays of length ``iterations``).

    Attributes:
      objective: the phase's objective at the iterate each iteration starts
        from, as the line search saw it (after a refresh: under the new
        weights).
      objective_after: the same objective (same weights) at the iterate the
        iteration moved to. Within a phase, ``objective_after[k] <=
        objective[k]`` up to the line search's tolerance whenever the line
        search succeeded.
      linesearch_failed: True where the line search ended without a step of
        sufficient decrease (its ``decrease_error`` > 0): the step it took may
        have raised the objective. Always False for an optimizer without a
        line search.
      refreshed: True where the weights were recomputed before the iteration
        and came out different: the objective changed there. L-BFGS was reset
        (or, for a change of at most ``WEIGHT_RTOL``, its cached value).
    """

    objective: jax.Array  # shape=(iterations,), the objective's dtype.
    objective_after: jax.Array  # shape=(iterations,), the objective's dtype.
    linesearch_failed: jax.Array  # shape=(iterations,), dtype=bool.
    refreshed: jax.Array  # shape=(iterations,), dtype=bool.


def _count(state, name: str) -> int:
    return len(optax.tree.get_all_with_path(state, name))


def _check_policy(policy, method, refresh_every, weighting_state, iterations):
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy = {policy!r}.")
    _base.check_every("iterations", iterations)
    if policy == "refreshed":
        if method is None:
            raise ValueError(
                "policy='refreshed' recomputes the weights with the method's update: "
                "pass method=... (the weighting method the state belongs to)."
            )
        _base.check_every("refresh_every", refresh_every)
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
) -> tuple[Any, Any, LBFGSInfo]:
    r"""Runs ``iterations`` steps of L-BFGS on weighted losses, under one policy.

    The whole phase is one jitted ``lax.scan``. Each iteration builds the
    objective (:func:`weighted_objective` with the current weights, or
    :func:`log_objective`), takes value and gradient with
    :func:`optax.value_and_grad_from_state` (reusing the line search's last
    evaluation), and calls ``optimizer.update`` with ``value``, ``grad`` and
    ``value_fn`` of that same objective. The policies (see the module notes):

    - ``"frozen"``: the weights of ``weighting_state`` for every iteration.
    - ``"refreshed"``: before iterations ``N, 2N, ...`` (``refresh_every =
      N``) call ``method.update`` on the losses at the current iterate; if the
      weights change by more than ``WEIGHT_RTOL``, :func:`reset_lbfgs` the
      optimizer state (a smaller change clears only the cached value). The method sees
      only these losses (an ``ema_decay`` averages over refreshes, an
      ``update_every`` counts refreshes). It is called with the keyword
      inputs ``params=`` and ``loss_fn=`` and those in ``method_inputs``;
      methods ignore inputs they do not use. A method's own ``update_every``
      counts these calls and may hold the weights on them (the gradient-based
      methods default to 10 or 1000): for this phase, pass the method built
      with ``update_every=1``; its state is the same.
    - ``"log"``: minimise :math:`\sum_i \log(L_i + \epsilon)`; the weights
      are not used and ``weighting_state`` comes back as given.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of scalar loss terms on a
        fixed batch (L-BFGS needs a deterministic objective). The objective is
        taken in the parameters' (lowest) dtype, as the line search needs. It is
        a static argument of the compiled loop: pass the same function object
        again to reuse the compiled program (for the next phase, or the next
        seed).
      params: the starting parameters, any pytree of float arrays (for Flax
        NNX, the ``nnx.State`` of ``nnx.split(model, nnx.Param, ...)``).
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
        :func:`optax_invloss.ntk_weights`. Functions of the parameters, static
        arguments of the compiled loop like ``loss_fn``.

    Returns:
      ``(params, weighting_state, info)``: the final parameters, the weighting
      state (the method's own state, as found in ``weighting_state``; updated
      by the refreshes), and an :class:`LBFGSInfo`.

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
    log = policy == "log"
    if log:
        log_objective(loss_fn, eps=eps)  # validates eps
    wstate = None if log else _base.find_weighting_state(weighting_state)
    params, wstate, info = _run(
        params,
        wstate,
        loss_fn=loss_fn,
        iterations=iterations,
        policy=policy,
        method=None if log else method,
        refresh_every=None if log else refresh_every,
        eps=eps,
        optimizer=optimizer,
        method_inputs=inputs,
    )
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
    ),
)
def _run(
    params,
    wstate,
    *,
    loss_fn,
    iterations,
    policy,
    method,
    refresh_every,
    eps,
    optimizer,
    method_inputs,
):
    """The scan of :func:`run_lbfgs`, compiled once per set of static settings."""
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
            fn = log_objective(loss_fn, eps=eps)
        else:
            fn = weighted_objective(loss_fn, wstate.loss_weights)
        return lambda p: jnp.asarray(fn(p)).astype(dtype)

    def refresh(params, opt_state, wstate):
        losses = loss_fn(params)
        _, new = method.update(
            losses, wstate, params=params, loss_fn=loss_fn, **dict(method_inputs)
        )
        opt_state, changed = _reset_for_new_weights(
            opt_state, wstate.loss_weights, new.loss_weights
        )
        return opt_state, new, changed

    def body(carry, k):
        params, opt_state, wstate = carry
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
        value_fn = objective(wstate)
        if cached:
            value, grad = optax.value_and_grad_from_state(value_fn)(
                params, state=opt_state
            )
        else:
            value, grad = jax.value_and_grad(value_fn)(params)
        updates, opt_state = optimizer.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=value_fn
        )
        params = optax.apply_updates(params, updates)
        if cached:
            after = optax.tree.get(opt_state, "value")
        else:
            after = value_fn(params)
        failed = jnp.asarray(False)
        if checked:
            failed = optax.tree.get(opt_state, "decrease_error") > 0
        record = (value, jnp.asarray(after, jnp.asarray(value).dtype), failed, changed)
        return (params, opt_state, wstate), record

    steps = jnp.arange(iterations)
    (params, _, wstate), record = jax.lax.scan(body, (params, opt_state, wstate), steps)
    return params, wstate, LBFGSInfo(*record)
