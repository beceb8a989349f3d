"""The registry of weighting methods that the contract suite runs over.

Every public method of the library has at least one entry here. An entry builds the
method and says which keyword inputs its ``update`` needs on the contract suite's
toy problem (see ``toy_loss_fn``): loss-value methods need none; gradient-based
methods take ``params`` and a function of the parameters: ``loss_fn`` (see
``toy_loss_fn``), or for NTK weights ``residual_fn`` (see ``toy_residual_fn``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import optax_invloss as oil


def toy_loss_fn(params):
    """Two terms that pull the parameters different ways, of different scales."""
    w, b = params["w"], params["b"]
    x = jnp.linspace(-1.0, 1.0, 8, dtype=w.dtype)
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": jnp.mean((pred - jnp.sin(x)) ** 2),
        "bc": 10.0 * (w[0] + w[1] + b - 1.0) ** 2 + 1e-3,
    }


def toy_residual_fn(params):
    """The per-point residuals behind ``toy_loss_fn``, in sum-of-squares form.

    The sum of the squares of each term's residuals is that term of
    ``toy_loss_fn`` (less the constant 1e-3 of ``bc``): the 8 ``pde`` residuals
    are divided by sqrt(8), because the ``pde`` loss is their mean.
    """
    w, b = params["w"], params["b"]
    x = jnp.linspace(-1.0, 1.0, 8, dtype=w.dtype)
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": (pred - jnp.sin(x)) / jnp.sqrt(jnp.asarray(8.0, w.dtype)),
        "bc": jnp.sqrt(jnp.asarray(10.0, w.dtype)) * (w[0] + w[1] + b - 1.0),
    }


def toy_params(dtype=jnp.float32):
    return {"w": jnp.asarray([0.1, -0.2], dtype), "b": jnp.asarray(0.05, dtype)}


class MethodCase(NamedTuple):
    name: str
    make: Callable[[], oil.WeightingMethod]
    # Keyword inputs for update, given the params and the function params -> losses.
    inputs: Callable[[Any, Callable], dict] = lambda params, loss_fn: {}


def _loss_gradient_inputs(params, loss_fn):
    return {"params": params, "loss_fn": loss_fn}


def _residual_inputs(params, loss_fn):
    del loss_fn
    # Rebuilt as a dict so that it also reads a Flax nnx.State of the toy params.
    residual_fn = lambda p: toy_residual_fn({"w": p["w"], "b": p["b"]})
    return {"params": params, "residual_fn": residual_fn}


def _vector_leaves(params):
    """The toy problem has no weight matrix: this mask selects ``w`` (ndim 1)."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 1, params)


CASES = [
    MethodCase("inverse_loss_default", lambda: oil.inverse_loss()),
    MethodCase("inverse_loss_bare", lambda: oil.inverse_loss(min_weight=0.0)),
    MethodCase(
        "inverse_loss_all_options",
        lambda: oil.inverse_loss(
            ema_decay=0.9, update_every=3, min_weight=0.1, max_weight=0.8
        ),
    ),
    MethodCase(
        "lr_annealing",
        lambda: oil.lr_annealing(reference="pde", update_every=1, mask=None),
        _loss_gradient_inputs,
    ),
    MethodCase(
        "lr_annealing_paper_variants",
        lambda: oil.lr_annealing(
            reference="bc",
            update_every=3,
            statistic="mean",
            lambda_inside=False,
            mask=_vector_leaves,
        ),
        _loss_gradient_inputs,
    ),
    MethodCase(
        "grad_norm_balance_mean_every_2",
        lambda: oil.grad_norm_balance(
            decay=0.5, update_every=2, reduction="mean", mask=_vector_leaves
        ),
        _loss_gradient_inputs,
    ),
    MethodCase(
        "ntk_weights", lambda: oil.ntk_weights(update_every=1), _residual_inputs
    ),
    MethodCase(
        "ntk_weights_chunked_decay",
        lambda: oil.ntk_weights(update_every=2, decay=0.5, chunk_size=3),
        _residual_inputs,
    ),
    MethodCase("gradnorm", lambda: oil.gradnorm(mask=None), _loss_gradient_inputs),
]
