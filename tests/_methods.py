"""The registry of weighting methods that the contract suite runs over.

Every public method of the library has at least one entry here. An entry builds the
method and says which keyword inputs its ``update`` needs on the contract suite's
toy problem (see ``toy_loss_fn``): loss-value methods need none; gradient-based
methods take ``params`` and a function of the parameters: ``loss_fn`` (see
``toy_loss_fn``), or for NTK weights ``residual_fn`` (see ``toy_residual_fn``,
and ``toy_point_residual_fn`` with ``points``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_invloss as oil


def toy_loss_fn(params):
    """Two terms that pull the parameters different ways, of different scales.

    ``w`` is a 1 x 2 weight matrix, so that the default masks of the
    gradient-based methods (weight matrices, the last layer) select it.
    """
    w, b = params["w"][0], params["b"]
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
    w, b = params["w"][0], params["b"]
    x = jnp.linspace(-1.0, 1.0, 8, dtype=w.dtype)
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": (pred - jnp.sin(x)) / jnp.sqrt(jnp.asarray(8.0, w.dtype)),
        "bc": jnp.sqrt(jnp.asarray(10.0, w.dtype)) * (w[0] + w[1] + b - 1.0),
    }


def toy_point_residual_fn(params, points):
    """``toy_residual_fn`` as a function of the points (``TOY_POINTS``)."""
    w, b = params["w"][0], params["b"]
    x = points["pde"].astype(w.dtype)
    pred = w[0] * x + w[1] * x**2 + b
    bc = jnp.sqrt(jnp.asarray(10.0, w.dtype)) * (w[0] + w[1] + b - 1.0)
    return {
        "pde": (pred - jnp.sin(x)) / jnp.sqrt(jnp.asarray(8.0, w.dtype)),
        "bc": jnp.zeros_like(points["bc"], w.dtype) + bc,
    }


# The boundary residual depends on no point: one dummy point for its one entry.
TOY_POINTS = {"pde": jnp.linspace(-1.0, 1.0, 8), "bc": jnp.zeros(1)}


def toy_params(dtype=jnp.float32):
    return {"w": jnp.asarray([[0.1, -0.2]], dtype), "b": jnp.asarray(0.05, dtype)}


class MethodCase(NamedTuple):
    name: str
    make: Callable[[], oil.WeightingMethod]
    # Keyword inputs for update, given the params and the function params -> losses.
    inputs: Callable[[Any, Callable], dict] = lambda params, loss_fn: {}
    # Whether update runs under strict dtype promotion. Not for the methods that
    # train with an Optax optimizer inside: optax.adam itself mixes dtypes
    # (decay ** count, a float to an int32 power, in its bias correction).
    strict: bool = True


def _loss_gradient_inputs(params, loss_fn):
    return {"params": params, "loss_fn": loss_fn}


def _residual_inputs(params, loss_fn):
    del loss_fn
    # Rebuilt as a dict so that it also reads a Flax nnx.State of the toy params.
    residual_fn = lambda p: toy_residual_fn({"w": p["w"], "b": p["b"]})
    return {"params": params, "residual_fn": residual_fn}


def _point_residual_inputs(params, loss_fn):
    del loss_fn
    return {
        "params": params,
        "residual_fn": lambda p, x: toy_point_residual_fn(
            {"w": p["w"], "b": p["b"]}, x
        ),
        "points": TOY_POINTS,
    }


def _array_leaves(params):
    """A mask of one's own: the leaves that are not scalars (``w``, not ``b``)."""
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
    # The loss-value methods. Their paper defaults start from equal weights and
    # adapt over hundreds of steps; on the toy problem equal weights let the pde
    # term rise for the first ~100 steps (the boundary term dominates), which the
    # 50-step Flax NNX check would read as a failure. These cases use settings
    # that adapt within a few steps; the defaults are tested in each method's
    # own test module.
    MethodCase(
        "static_weights_warmup",
        lambda: oil.static_weights(
            {"pde": 1.0, "bc": 1.0},
            schedules={"bc": optax.linear_schedule(0.01, 1.0, transition_steps=100)},
        ),
    ),
    MethodCase("softadapt_beta10", lambda: oil.softadapt(beta=10.0, variant="plain")),
    MethodCase(
        "softadapt_normalized_window3_every2",
        lambda: oil.softadapt(beta=2.0, window=3, variant="normalized", update_every=2),
    ),
    MethodCase(
        "relobralo_frequent_lookback",
        lambda: oil.relobralo(alpha=0.9, temperature=0.1, lookback=0.5, key=3),
    ),
    MethodCase(
        "uncertainty_weighting_lr0.1",
        lambda: oil.uncertainty_weighting(learning_rate=0.1),
        strict=False,
    ),
    MethodCase("dwa_window3", lambda: oil.dwa(temperature=0.1, window=3)),
    MethodCase("resnorm_lr0.05", lambda: oil.resnorm(learning_rate=0.05)),
    # The default mask (the weight matrix w).
    MethodCase(
        "lr_annealing",
        lambda: oil.lr_annealing(reference="pde", update_every=1),
        _loss_gradient_inputs,
    ),
    MethodCase(
        "lr_annealing_paper_variants",
        lambda: oil.lr_annealing(
            reference="bc",
            update_every=3,
            statistic="mean",
            lambda_inside=False,
            mask=_array_leaves,
        ),
        _loss_gradient_inputs,
    ),
    MethodCase(
        "grad_norm_balance_mean_every_2",
        lambda: oil.grad_norm_balance(
            decay=0.5, update_every=2, reduction="mean", mask=_array_leaves
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
    MethodCase(
        "ntk_weights_points",
        lambda: oil.ntk_weights(update_every=1, chunk_size=3),
        _point_residual_inputs,
    ),
    # The default mask (the last layer: w).
    MethodCase("gradnorm", lambda: oil.gradnorm(), _loss_gradient_inputs, strict=False),
]


def one_case_per_method(cases):
    """The first registry case of each method and set of inputs.

    Variants of a method share the reduction; a different set of keyword inputs
    (NTK weights with and without ``points``) is reduced differently.
    """
    seen, chosen = set(), []
    for case in cases:
        inputs = tuple(sorted(case.inputs(None, None)))
        method = (case.make().update.__qualname__.split(".")[0], inputs)
        if method not in seen:
            seen.add(method)
            chosen.append(case)
    return chosen
