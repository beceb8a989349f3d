"""A plain tanh multilayer perceptron in Flax NNX, as used by the PINN papers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

#: Initialisations by name: (weight initializer, bias initializer).
INITS = {
    # Flax's Glorot normal: a truncated normal rescaled to variance 2/(in+out).
    "glorot": (
        nnx.initializers.glorot_normal(),
        nnx.initializers.zeros_init(),
    ),
    # The PINN authors' "Xavier" (Wang et al.'s code): an untruncated normal of
    # standard deviation sqrt(2/(in+out)), zero biases.
    "xavier": (
        nnx.initializers.variance_scaling(1.0, "fan_avg", "normal"),
        nnx.initializers.zeros_init(),
    ),
    # The NTK paper's 1D Poisson code ("NTK_init"): weights N(0, 1/in), biases
    # N(0, 1).
    "ntk": (
        nnx.initializers.variance_scaling(1.0, "fan_in", "normal"),
        nnx.initializers.normal(1.0),
    ),
}


class MLP(nnx.Module):
    """Fully connected tanh network, Glorot normal weights and zero biases by default.

    Args:
      layers: widths, input first and output last, e.g. ``(2, 50, 50, 50, 1)`` for
        three hidden layers of 50 on a 2D input. The output width must be 1.
      rngs: Flax random streams for the initialisation.
      init: ``"glorot"`` (default), ``"xavier"`` or ``"ntk"`` (see ``INITS``).
      input_mean, input_std: when given, the network sees ``(x - mean) / std``
        (fixed constants, one per input), as the PINN authors' code standardizes
        its inputs; derivatives are still taken with respect to ``x``.

    Calling the model on one point of shape ``(d,)`` returns a scalar; on a batch of
    shape ``(N, d)`` it returns shape ``(N,)``.

    Examples:
      >>> from flax import nnx
      >>> model = MLP((2, 8, 1), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros(2)).shape, model(jnp.zeros((5, 2))).shape
      ((), (5,))
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        rngs: nnx.Rngs,
        init: str = "glorot",
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ):
        layers = tuple(int(n) for n in layers)
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
        if (input_mean is None) != (input_std is None):
            raise ValueError("give both input_mean and input_std, or neither")
        if input_mean is not None and not (
            len(input_mean) == len(input_std) == layers[0] and min(input_std) > 0
        ):
            raise ValueError(
                f"input_mean and input_std need {layers[0]} entries each, the "
                f"standard deviations positive; got {input_mean} and {input_std}"
            )
        if len(layers) < 2 or layers[-1] != 1 or min(layers) < 1:
            raise ValueError(
                "layers must be positive widths from input to a scalar output "
                f"(last entry 1), got layers = {layers}"
            )
        self.layers = layers
        # Plain tuples of floats: static, compiled in as constants.
        self.input_mean = None if input_mean is None else tuple(map(float, input_mean))
        self.input_std = None if input_std is None else tuple(map(float, input_std))
        kernel_init, bias_init = INITS[init]
        self.linears = nnx.List(
            [
                nnx.Linear(
                    n_in,
                    n_out,
                    kernel_init=kernel_init,
                    bias_init=bias_init,
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
        if self.input_mean is not None:
            shape = (1,) * (x.ndim - 1) + (-1,)  # explicit broadcast over a batch
            mean = jnp.asarray(self.input_mean, x.dtype).reshape(shape)
            x = (x - mean) / jnp.asarray(self.input_std, x.dtype).reshape(shape)
        for linear in self.linears[:-1]:
            x = jnp.tanh(linear(x))
        return self.linears[-1](x)[..., 0]
