"""Small helpers shared by the test modules (the habit of optax's test_utils)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import optax_invloss as oil

# Wrappers that take a method rather than build one.
WRAPPERS = ("sharded",)


def factories() -> dict[str, Callable[..., oil.WeightingMethod]]:
    """The public factories in ``oil.__all__`` annotated to return a method."""
    out = {}
    for name in oil.__all__:
        obj = getattr(oil, name)
        if name in WRAPPERS or not inspect.isfunction(obj):
            continue
        annotation = str(inspect.signature(obj).return_annotation)
        if annotation.split(".")[-1] == "WeightingMethod":
            out[name] = obj
    return out


def factory_of(method: oil.WeightingMethod) -> str:
    """The name of the factory that built ``method`` (its ``init``'s qualname)."""
    return method.init.__qualname__.split(".")[0]


def check_weights(got: dict, expected: dict, rtol: float = 1e-12) -> None:
    """Each expected weight, by name, to ``rtol``."""
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=rtol, err_msg=k)


def run_updates(method, params_seq, losses_of, **inputs):
    """One jitted update per parameters in ``params_seq``; ``(history, state)``.

    The losses are ``losses_of(params)``; ``params=`` and ``inputs`` (such as
    ``loss_fn=`` or ``residual_fn=``) are passed to ``update``. ``history``
    holds the weights of each update as a dict of floats.
    """
    state = method.init(losses_of(params_seq[0]))
    update = jax.jit(
        lambda losses, state, params: method.update(
            losses, state, params=params, **inputs
        )
    )
    history = []
    for params in params_seq:
        weights, state = update(losses_of(params), state, params)
        history.append({k: float(v) for k, v in weights.items()})
    return history, state


def scan_two_terms(method, pde, bc):
    """``method`` over the rows of two loss sequences in ``lax.scan``.

    Returns ``(state, weights)`` with the weights stacked over the steps.
    """
    rows = jnp.stack([jnp.asarray(pde), jnp.asarray(bc)], 1)

    def body(state, row):
        weights, state = method.update({"pde": row[0], "bc": row[1]}, state)
        return state, weights

    state = method.init({"pde": 0.0, "bc": 0.0})
    return jax.jit(lambda s: jax.lax.scan(body, s, rows))(state)
