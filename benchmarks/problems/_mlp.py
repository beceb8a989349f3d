"""A plain tanh multilayer perceptron in Flax NNX, as used by the PINN papers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """Fully connected tanh network with Glorot (Xavier) normal weights, zero biases.

    Args:
      layers: widths, input first and output last, e.g. ``(2, 50, 50, 50, 1)`` for
        three hidden layers of 50 on a 2D input. The output width must be 1.
      rngs: Flax random streams for the initialisation.

    Calling the model on one point of shape ``(d,)`` returns a scalar; on a batch of
    shape ``(N, d)`` it returns shape ``(N,)``.

    Examples:
      >>> from flax import nnx
      >>> model = MLP((2, 8, 1), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros(2)).shape, model(jnp.zeros((5, 2))).shape
      ((), (5,))
    """

    def __init__(self, layers: Sequence[int], *, rngs: nnx.Rngs):
        layers = tuple(int(n) for n in layers)
        if len(layers) < 2 or layers[-1] != 1 or min(layers) < 1:
            raise ValueError(
                "layers must be positive widths from input to a scalar output "
                f"(last entry 1), got layers = {layers}"
            )
        self.layers = layers
        self.linears = nnx.List(
            [
                nnx.Linear(
                    n_in,
                    n_out,
                    kernel_init=nnx.initializers.glorot_normal(),
                    bias_init=nnx.initializers.zeros_init(),
                    rngs=rngs,
                )
                for n_in, n_out in zip(layers[:-1], layers[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.layers[0] or x.ndim not in (1, 2):
            raise ValueError(
                f"MLP expects one point of shape ({self.layers[0]},) or a batch of "
                f"shape (N, {self.layers[0]}), got shape {x.shape}"
            )
        for linear in self.linears[:-1]:
            x = jnp.tanh(linear(x))
        return self.linears[-1](x)[..., 0]
