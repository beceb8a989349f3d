"""Flax NNX: functions of a model as functions of its parameters.

``nnx.Optimizer.update(model, grads, **kwargs)`` hands the wrapped Optax
optimizer the model's parameters as a pure ``nnx.State``, so a gradient-based
method calls ``loss_fn(params)`` with that state, not with the model. The
helpers here rebuild the model around the parameters they are given. Flax is
imported only when one of them is called.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any


def _nnx():
    from flax import nnx

    return nnx


def is_module(x) -> bool:
    """Whether ``x`` is a Flax ``nnx.Module`` (False when Flax is not loaded)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Module)


def nnx_params_fn(fn: Callable[..., Any], model: Any) -> Callable[..., Any]:
    """``fn(model, *args)`` as a function of the model's parameters.

    Returns ``g(params, *args) = fn(model', *args)``, where ``model'`` is
    ``model`` with the parameters ``params`` (a pure ``nnx.State`` holding any
    subset of the model's variables, as ``nnx.Optimizer`` hands them to its
    optimizer) and the model's other variables as they are at this call. Call it
    inside the training step, where ``model`` is the current one, and pass the
    result as the keyword input of a gradient-based method::

      optimizer.update(model, grads, losses=losses,
                       loss_fn=optax_invloss.nnx_params_fn(loss_terms, model))

    ``residual_fn(model, points)`` for :func:`optax_invloss.ntk_weights` works
    the same way. ``model`` itself is not changed: ``fn`` runs on a copy, and
    whatever it writes to the copy's variables (batch statistics, RNG counts) is
    dropped.

    Args:
      fn: a function whose first argument is the model.
      model: a Flax ``nnx.Module``.

    Returns:
      ``g(params, *args)``, differentiable in ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import optax_invloss
      >>> model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
      >>> loss_terms = lambda m: {"fit": jnp.sum((m(jnp.ones((1, 1))) - 1.0) ** 2)}
      >>> loss_fn = optax_invloss.nnx_params_fn(loss_terms, model)
      >>> params = nnx.as_pure(nnx.state(model, nnx.Param))
      >>> print(bool(loss_fn(params)["fit"] == loss_terms(model)["fit"]))
      True
      >>> zeros = jax.tree.map(jnp.zeros_like, params)
      >>> print(float(loss_fn(zeros)["fit"]))  # the model with zero parameters
      1.0
    """
    nnx = _nnx()
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"nnx_params_fn(fn, model): model must be a Flax nnx.Module, got "
            f"{type(model).__name__}."
        )
    graphdef, state = nnx.split(model)
    state = nnx.as_pure(state)

    def params_fn(params, *args, **kwargs):
        return fn(nnx.merge(graphdef, nnx.merge_state(state, params)), *args, **kwargs)

    return params_fn


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """``fn(model, *args)`` as ``f(params, rest, *args)``: hashable, for ``jax.jit``."""

    fn: Callable[..., Any]
    graphdef: Any

    def bind(self, rest: Any) -> Callable[..., Any]:
        nnx = _nnx()
        return lambda params, *args: self.fn(
            nnx.merge(self.graphdef, params, rest), *args
        )


def split_model(model: Any) -> tuple[Any, Any, Any]:
    """``(graphdef, params, rest)``: a model's ``nnx.Param``s and the rest, pure."""
    nnx = _nnx()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


def write_back(model: Any, params: Any) -> Any:
    """Writes ``params`` into ``model``'s ``nnx.Param``s in place; returns it."""
    _nnx().update(model, params)
    return model
