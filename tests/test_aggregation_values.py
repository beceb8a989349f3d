"""Gradient aggregators against hand values and their defining properties.

Reference values: METHODS_NEXT.md section 12 (computed by hand, exact, J1, J2,
J3; each row of J is one term's gradient), torchjd's Nash-MTL value for J3, and
properties checked on random gradient matrices with numpy. One jit compilation
per method and shape: every batch of matrices goes through ``jax.vmap``.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_invloss as oil

# J1 and J2 padded with a zero column (G is unchanged) so all three share a shape.
TABLE_J = np.array(
    [[[1, 0, 0], [-1, 1, 0]], [[3, 0, 0], [0, 4, 0]], [[-4, 1, 1], [6, 1, 1]]],
    dtype=np.float64,
)
TABLE = {  # METHODS_NEXT.md section 12
    "pcgrad": [(0.5, 1.5, 0), (3, 4, 0), (0.5848, 3.8012, 3.8012)],
    "mgda": [(0.2, 0.4, 0), (1.92, 1.44, 0), (0, 1, 1)],
    "imtl_g": [(0.1716, 0.4142, 0), (1.7143, 1.7143, 0), (0.0767, 1, 1)],
    "config": [(0.3536, 0.8536, 0), (3.5, 3.5, 0), (0.1588, 2.0706, 2.0706)],
    "upgrad": [(0.25, 0.75, 0), (1.5, 2, 0), (0.2924, 1.9006, 1.9006)],
    "dualproj": [(0, 0.5, 0), (1.5, 2, 0), (0.5556, 1.1111, 1.1111)],
}
TXS = {  # one instance each, so that their compilations are reused
    "pcgrad": oil.pcgrad(),
    "mgda": oil.mgda(),
    "imtl_g": oil.imtl_g(),
    "config": oil.config(),
    "upgrad": oil.upgrad(),
    "dualproj": oil.dualproj(),
    "cagrad": oil.cagrad(0.5),
    "nash_mtl": oil.nash_mtl(max_norm=None),
}
_JITTED = {}


def batched(tx, jacs):
    """The update of ``tx`` for each matrix in ``jacs`` ``(B, m, N)``."""
    if id(tx) not in _JITTED:

        def one(jac):
            state = tx.init(jnp.zeros(jac.shape[-1], jac.dtype))
            grads = {f"t{i}": jac[i] for i in range(jac.shape[0])}
            return tx.update(grads, state)[0]

        _JITTED[id(tx)] = (tx, jax.jit(jax.vmap(one)))
    return np.asarray(_JITTED[id(tx)][1](jnp.asarray(jacs)))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_exact_table(name):
    got = batched(TXS[name], TABLE_J)
    np.testing.assert_allclose(got, np.array(TABLE[name]), atol=1e-4)


def test_cagrad_values_torchjd_convention():
    got = batched(TXS["cagrad"], TABLE_J)
    np.testing.assert_allclose(got[0], [0.25, 0.5, 0], atol=1e-4)
    np.testing.assert_allclose(got[2], [0.1835, 1.2041, 1.2041], atol=1e-4)
    # The official scaling: times m / (1 + c^2).
    rescaled = batched(oil.cagrad(0.5, rescale=True), TABLE_J)
    np.testing.assert_allclose(rescaled, got * 2 / 1.25, rtol=1e-6)


def test_nash_mtl_torchjd_value_and_norm():
    clipped = batched(oil.nash_mtl(), TABLE_J)[2]
    np.testing.assert_allclose(clipped, [0.0542, 0.7061, 0.7061], atol=1e-4)
    raw = batched(TXS["nash_mtl"], TABLE_J)
    # |J^T alpha|^2 = m, and for two terms the direction is ConFIG's.
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.sqrt(2), rtol=1e-8)
    config = np.array(TABLE["config"])
    unit = config / np.linalg.norm(config, axis=1, keepdims=True)
    np.testing.assert_allclose(raw / np.sqrt(2), unit, atol=1e-4)


# ----------------------------------------------------------------------------------
# Properties on random matrices (m = 3 terms, N = 4 parameters), and the guards
# (zero gradient, parallel gradients, rank below m) in the same batch.

RNG = np.random.default_rng(0)
GUARD_J = np.array(
    [
        [[1.0, 0.0, 0, 0], [-1.0, 1.0, 0, 0], [0.0, 0.0, 0, 0]],  # a zero gradient
        [[1.0, 2.0, 0, 0], [2.0, 4.0, 0, 0], [-1.0, 0.5, 0, 0]],  # parallel rows
        [[1.0, 0.0, 0, 0], [0.0, 1.0, 0, 0], [-1.0, -1.0, 0, 0]],  # rank 2, mean 0
    ]
)
RANDOM_J = RNG.normal(size=(61, 3, 4))
ALL_J = np.concatenate([GUARD_J, RANDOM_J])


@pytest.fixture(scope="module")
def all_updates():
    return {name: batched(tx, ALL_J) for name, tx in TXS.items()}


@pytest.fixture(scope="module")
def random_updates(all_updates):
    return {name: upd[len(GUARD_J) :] for name, upd in all_updates.items()}


@pytest.fixture(scope="module")
def guard_updates(all_updates):
    return {name: upd[: len(GUARD_J)] for name, upd in all_updates.items()}


@pytest.mark.parametrize("name", sorted(TXS))
def test_guards_finite(guard_updates, name):
    assert np.all(np.isfinite(guard_updates[name]))


@pytest.mark.parametrize("name", ["config", "imtl_g", "mgda", "nash_mtl", "pcgrad"])
def test_zero_gradient_term_is_left_out(guard_updates, name):
    two = batched(TXS[name], TABLE_J[:1])[0]  # the same two gradients alone
    np.testing.assert_allclose(guard_updates[name][0, :3], two, rtol=1e-10, atol=1e-12)


def test_no_conflict_when_rank_deficient(guard_updates):
    for name in ("upgrad", "dualproj", "mgda"):
        dots = np.einsum("bmn,bn->bm", GUARD_J, guard_updates[name])
        assert np.all(dots >= -1e-9), name


@pytest.mark.parametrize("name", ["config", "upgrad", "dualproj", "mgda", "nash_mtl"])
def test_non_conflicting(random_updates, name):
    dots = np.einsum("bmn,bn->bm", RANDOM_J, random_updates[name])
    scale = np.linalg.norm(RANDOM_J, axis=2) * np.linalg.norm(
        random_updates[name], axis=1, keepdims=True
    )
    assert np.all(dots >= -1e-9 * scale)


def test_config_equal_cosines_and_length(random_updates):
    upd = random_updates["config"]
    unit = RANDOM_J / np.linalg.norm(RANDOM_J, axis=2, keepdims=True)
    cosines = np.einsum("bmn,bn->bm", unit, upd) / np.linalg.norm(upd, axis=1)[:, None]
    np.testing.assert_allclose(cosines, cosines[:, :1] * np.ones(3), rtol=1e-8)
    # Length: the sum of the projections of the raw gradients.
    d_hat = upd / np.linalg.norm(upd, axis=1, keepdims=True)
    length = np.einsum("bmn,bn->b", RANDOM_J, d_hat)
    np.testing.assert_allclose(np.linalg.norm(upd, axis=1), length, rtol=1e-8)


def test_config_matches_authors_pseudo_inverse_form(random_updates):
    # conflictfree: d = pinv(U) @ 1, update = (sum_i g_i . d_hat) d_hat.
    for jac, upd in zip(RANDOM_J[:8], random_updates["config"][:8], strict=True):
        unit = jac / np.linalg.norm(jac, axis=1, keepdims=True)
        d = np.linalg.pinv(unit) @ np.ones(3)
        d_hat = d / np.linalg.norm(d)
        np.testing.assert_allclose(upd, np.sum(jac @ d_hat) * d_hat, rtol=1e-8)


def test_imtl_g_equal_projections(random_updates):
    upd = random_updates["imtl_g"]
    unit = RANDOM_J / np.linalg.norm(RANDOM_J, axis=2, keepdims=True)
    proj = np.einsum("bmn,bn->bm", unit, upd)
    np.testing.assert_allclose(proj, proj[:, :1] * np.ones(3), rtol=1e-6, atol=1e-9)


def test_mgda_is_min_norm_point(random_updates):
    # Exact: no point of a grid of the simplex is shorter.
    upd = random_updates["mgda"]
    grid = np.array(
        [
            (a, b, 1 - a - b)
            for a in np.linspace(0, 1, 41)
            for b in np.linspace(0, 1, 41)
            if a + b <= 1 + 1e-12
        ]
    )
    for jac, u in zip(RANDOM_J[:16], upd[:16], strict=True):
        best = np.min(np.linalg.norm(grid @ jac, axis=1))
        assert np.linalg.norm(u) <= best + 1e-12


def test_cagrad_solves_its_problem(random_updates):
    # CAGrad's primal: the point of the ball |d - g0| <= c |g0| that maximises the
    # smallest g_i . d; its update is on the sphere and beats sampled points.
    upd = random_updates["cagrad"]
    dirs = RNG.normal(size=(4000, 4))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for jac, u in zip(RANDOM_J[:16], upd[:16], strict=True):
        g0 = jac.mean(0)
        phi = 0.5 * np.linalg.norm(g0)
        assert np.linalg.norm(u - g0) == pytest.approx(phi, rel=1e-8)
        sampled = np.max(np.min((g0 + phi * dirs) @ jac.T, axis=1))
        assert np.min(jac @ u) >= sampled - 1e-12


def test_upgrad_linear_under_row_scaling():
    scale = np.array([0.5, 2.0, 7.0])
    scaled = batched(TXS["upgrad"], ALL_J * scale[None, :, None])
    # update(diag(c) J) = sum_i c_i pi(g_i) / m = upgrad with preference c / m.
    weighted = batched(oil.upgrad(preference=tuple(scale / 3)), ALL_J)
    np.testing.assert_allclose(scaled, weighted, rtol=1e-8, atol=1e-10)


def test_mean_when_nothing_conflicts():
    jacs = np.abs(RNG.normal(size=ALL_J.shape))  # all dot products positive
    mean = jacs.mean(axis=1)
    for tx in (TXS["upgrad"], TXS["dualproj"], oil.pcgrad(reduction="mean")):
        np.testing.assert_allclose(batched(tx, jacs), mean, rtol=1e-8)
    np.testing.assert_allclose(batched(TXS["pcgrad"], jacs), jacs.sum(1), rtol=1e-8)


def _pcgrad_numpy(jac, orders):
    out = []
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            if j != i and g @ jac[j] < 0:
                g = g - (g @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        out.append(g)
    return np.sum(out, axis=0)


def test_pcgrad_orders_match_numpy_surgery(random_updates):
    for jac, upd in zip(RANDOM_J[:8], random_updates["pcgrad"][:8], strict=True):
        np.testing.assert_allclose(upd, _pcgrad_numpy(jac, [range(3)] * 3), rtol=1e-8)
    # Random order: one of the 2^3 combinations of orders, the key advances.
    tx = oil.pcgrad(order="random", seed=3)
    state = tx.init(jnp.zeros(4))
    grads = {f"t{i}": jnp.asarray(RANDOM_J[0, i]) for i in range(3)}
    upd, state2 = jax.jit(tx.update)(grads, state)
    options = [
        _pcgrad_numpy(
            RANDOM_J[0], [[j for j in perm if j != i] for i, perm in enumerate(choice)]
        )
        for choice in itertools.product(*[list(itertools.permutations(range(3)))] * 3)
    ]
    assert min(np.max(np.abs(np.asarray(upd) - o)) for o in options) < 1e-8
    assert not np.array_equal(state2.aggregation_key, state.aggregation_key)


@pytest.mark.parametrize(
    "name, fallback, atol",
    [
        ("upgrad", oil.upgrad(max_exact_terms=2, iterations=2000), 1e-4),
        ("dualproj", oil.dualproj(max_exact_terms=2, iterations=2000), 1e-4),
        ("mgda", oil.mgda(max_exact_terms=2, iterations=2000), 3e-3),
        ("cagrad", oil.cagrad(0.5, max_exact_terms=2, iterations=2000), 3e-2),
    ],
)
def test_fixed_iteration_fallbacks_approach_the_exact_solve(
    random_updates, name, fallback, atol
):
    got = batched(fallback, RANDOM_J[:8])
    np.testing.assert_allclose(got, random_updates[name][:8], atol=atol)
