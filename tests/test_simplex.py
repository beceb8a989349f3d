"""The capped-simplex projection under jit, against a bisection in numpy.

``project_capped_simplex`` returns ``clip(c v, lo, hi)`` with the one ``c`` that
makes the weights sum to 1. The reference finds ``c`` by bisection on ``log c``
in float64 numpy (independent of the closed form: no kinks, no segments), over
random inverse losses spanning 40 orders of magnitude, compiled, where XLA may
round a recomputed value differently from its first computation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_invloss import _inverse_loss


def _reference(losses: np.ndarray, lo: float, hi: float) -> np.ndarray:
    log_v = -np.log(losses)  # v = 1 / L
    g = lambda t: np.clip(np.exp(t + log_v), lo, hi).sum()
    a, b = np.log(max(lo, 1e-300)) - log_v.max() - 1.0, np.log(hi) - log_v.min() + 1.0
    for _ in range(200):  # g(a) <= 1 <= g(b)
        mid = 0.5 * (a + b)
        a, b = (mid, b) if g(mid) <= 1.0 else (a, mid)
    return np.clip(np.exp(0.5 * (a + b) + log_v), lo, hi)


# (n, lo, hi): the default floor; floor and ceiling both binding; a ceiling
# without a floor; a ceiling that cannot bind (hi = 1 - (n - 1) lo); all at lo.
CAPS = [(2, 0.05, 1.0), (4, 0.05, 0.4), (3, 0.0, 0.5), (3, 0.2, 0.6), (2, 0.5, 1.0)]


@pytest.mark.parametrize("n, lo, hi", CAPS)
def test_projection_matches_bisection_under_jit(n, lo, hi):
    rng = np.random.default_rng(n)
    losses = np.exp(rng.normal(0.0, 15.0, (200, n)))  # 1e-20 .. 1e20 and beyond
    losses[:40, 0] = losses[:40, -1]  # ties
    project = jax.jit(
        jax.vmap(lambda l: _inverse_loss.capped_inverse_weights(l, 1e-300, lo, hi))
    )
    got = np.asarray(project(jnp.asarray(losses)))
    want = np.stack([_reference(row, lo, hi) for row in losses])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    assert np.all(got >= lo) and np.all(got <= hi)
