"""Tests for the PDE benchmark problems in `benchmarks.problems`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.problems import MLP, PROBLEMS, Preset, get_problem, relative_l2
from benchmarks.problems import burgers as burgers_module

TERMS = {
    "helmholtz": ("pde", "bc"),
    "helmholtz5": ("pde", "left", "right", "bottom", "top"),
    "poisson": ("pde", "bc"),
    "wave": ("pde", "bc", "ic", "ic_t"),
    "burgers": ("pde", "left", "right", "ic"),
    "allen_cahn": ("pde", "ic", "bc", "bc_x"),
}
ANALYTIC = ("helmholtz", "helmholtz5", "poisson", "wave")
# Closed box [low, high] of the domain, per problem.
BOXES = {
    "helmholtz": ([-1.0, -1.0], [1.0, 1.0]),
    "helmholtz5": ([-1.0, -1.0], [1.0, 1.0]),
    "poisson": ([0.0], [1.0]),
    "wave": ([0.0, 0.0], [1.0, 1.0]),
    "burgers": ([-1.0, 0.0], [1.0, 1.0]),
    "allen_cahn": ([-1.0, 0.0], [1.0, 1.0]),
}


def _small_mlp(problem, seed=0):
    return MLP((problem.input_dim, 8, 8, 1), rngs=nnx.Rngs(seed))


# --- registry and presets -------------------------------------------------------


def test_registry_names_and_terms():
    assert set(PROBLEMS) == set(TERMS)
    for name, terms in TERMS.items():
        problem = get_problem(name)
        assert problem.name == name
        assert problem.term_names == terms
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        get_problem("nope")


@pytest.mark.parametrize("name", sorted(TERMS))
def test_presets(name):
    problem = get_problem(name)
    for key in ("quick", "paper"):
        preset = problem.preset(key)
        assert preset.layers[0] == problem.input_dim
        assert preset.layers[-1] == 1
        assert preset.batch > 0 and preset.steps > 0
        assert isinstance(preset.make_optimizer(), optax.GradientTransformation)
    with pytest.raises(ValueError, match="no preset 'huge'"):
        problem.preset("huge")


def test_paper_presets_match_the_papers():
    helmholtz = get_problem("helmholtz").preset("paper")
    assert helmholtz.layers == (2, 50, 50, 50, 1)
    assert (helmholtz.batch, helmholtz.steps) == (128, 40_000)
    assert get_problem("wave").preset("paper").layers == (2, 500, 500, 500, 500, 500, 1)
    assert get_problem("burgers").preset("paper").layers == (2, 256, 256, 256, 256, 1)
    poisson = get_problem("poisson")
    paper = poisson.preset("paper")
    assert paper.layers == (1, 100, 1) and paper.optimizer == "sgd"
    assert float(paper.schedule()(30_000)) == pytest.approx(1e-5)
    assert poisson.preset("adam").optimizer == "adam"


def test_helmholtz_paper_preset_is_the_authors_setup():
    # ../shared/BENCHMARKS.md section 1 and the authors' Helmholtz2D code: 3 x 50
    # tanh, untruncated Xavier normal, inputs standardized by the domain's mean
    # and std, 128 points per side per step, boundary loss = sum over the 4 sides
    # of their mean squares, Adam 1e-3 * 0.9^(step/1000), 40k steps, 100 x 100 grid.
    problem = get_problem("helmholtz")
    paper = problem.preset("paper")
    assert (paper.layers, paper.batch, paper.steps) == ((2, 50, 50, 50, 1), 128, 40_000)
    assert (paper.optimizer, paper.learning_rate) == ("adam", 1e-3)
    assert (paper.decay_rate, paper.decay_steps) == (0.9, 1000)
    assert (paper.init, paper.standardize, paper.sum_pieces) == ("xavier", True, True)
    assert problem.eval_shape == (100, 100) and dict(problem.pieces) == {"bc": 4}
    assert get_problem("helmholtz5").preset("paper") == paper
    # Standardization maps U(-1, 1)^2 to mean 0 and std 1 per input.
    points = problem.sample(jax.random.key(0), 200_000)["pde"]
    mean = jnp.asarray(problem.input_mean)[None, :]
    std = jnp.asarray(problem.input_std)[None, :]
    np.testing.assert_allclose(std, 1 / math.sqrt(3), rtol=1e-6)
    scaled = (points - mean) / std
    np.testing.assert_allclose(jnp.mean(scaled, axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(jnp.std(scaled, axis=0), 1.0, atol=0.01)
    # The preset's network sees x * sqrt(3): the same weights unscaled, at x * sqrt(3).
    x = points[:5]
    plain = MLP(paper.layers, rngs=nnx.Rngs(0), init="xavier")
    np.testing.assert_allclose(
        problem.network(paper, 0)(x), plain(x * math.sqrt(3)), rtol=1e-5, atol=1e-6
    )
    # Boundary loss: the sum of the sides' mean squares (helmholtz5's side terms).
    small = MLP((2, 8, 1), rngs=nnx.Rngs(1))
    batch = problem.sample(jax.random.key(1), 16)
    sides = get_problem("helmholtz5").loss_terms(
        small, get_problem("helmholtz5").sample(jax.random.key(1), 16)
    )
    summed = problem.loss_terms(small, batch, sum_pieces=True)
    total = sum(float(sides[s]) for s in ("left", "right", "bottom", "top"))
    assert float(summed["bc"]) == pytest.approx(total, rel=1e-5)
    assert float(summed["pde"]) == pytest.approx(float(sides["pde"]), rel=1e-5)
    assert float(problem.loss_terms(small, batch)["bc"]) == pytest.approx(
        total / 4, rel=1e-5
    )


def test_schedule_decays_by_point_nine_per_thousand_steps():
    schedule = get_problem("helmholtz").preset("paper").schedule()
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(1000)) == pytest.approx(0.9e-3)
    assert float(schedule(2500)) == pytest.approx(1e-3 * 0.9**2.5)


def test_preset_validation():
    with pytest.raises(ValueError, match="optimizer = 'lbfgs'"):
        Preset(layers=(1, 4, 1), batch=1, steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="layers"):
        Preset(layers=(1, 4, 2), batch=1, steps=1)


# --- sampling and loss terms -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(TERMS))
def test_sample_shapes_and_domain(name):
    problem = get_problem(name)
    batch = jax.jit(problem.sample, static_argnums=1)(jax.random.key(0), 8)
    assert set(batch) == set(problem.term_names)  # jit returns dicts key-sorted
    low, high = BOXES[name]
    for term, points in batch.items():
        expected = 32 if (name, term) == ("helmholtz", "bc") else 8
        assert points.shape == (expected, problem.input_dim), term
        assert np.all(np.asarray(points) >= np.array(low))
        assert np.all(np.asarray(points) <= np.array(high))


def test_boundary_and_initial_points_lie_where_documented():
    sides = get_problem("helmholtz5").sample(jax.random.key(1), 8)
    np.testing.assert_array_equal(sides["left"][:, 0], -1.0)
    np.testing.assert_array_equal(sides["right"][:, 0], 1.0)
    np.testing.assert_array_equal(sides["bottom"][:, 1], -1.0)
    np.testing.assert_array_equal(sides["top"][:, 1], 1.0)
    wave = get_problem("wave").sample(jax.random.key(1), 8)
    np.testing.assert_array_equal(wave["bc"][:, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(wave["ic"][:, 1], 0.0)
    np.testing.assert_array_equal(wave["ic_t"][:, 1], 0.0)
    burgers = get_problem("burgers").sample(jax.random.key(1), 8)
    np.testing.assert_array_equal(burgers["left"][:, 0], -1.0)
    np.testing.assert_array_equal(burgers["right"][:, 0], 1.0)
    np.testing.assert_array_equal(burgers["ic"][:, 1], 0.0)


def test_helmholtz_groupings_draw_the_same_points():
    key = jax.random.key(2)
    two = get_problem("helmholtz").sample(key, 8)
    five = get_problem("helmholtz5").sample(key, 8)
    np.testing.assert_array_equal(two["pde"], five["pde"])
    np.testing.assert_array_equal(
        two["bc"], np.concatenate([five[s] for s in ("left", "right", "bottom", "top")])
    )


def test_sampling_is_random_per_key_except_full_batch():
    for name, problem in PROBLEMS.items():
        a = problem.sample(jax.random.key(0), 8)["pde"]
        b = problem.sample(jax.random.key(1), 8)["pde"]
        assert np.array_equal(a, b) == problem.full_batch, name
    poisson = get_problem("poisson").sample(jax.random.key(0), 100)
    np.testing.assert_allclose(poisson["pde"][:, 0], np.linspace(0, 1, 100), atol=1e-7)
    assert np.sum(poisson["bc"] == 0.0) == np.sum(poisson["bc"] == 1.0) == 50


@pytest.mark.parametrize("name", sorted(TERMS))
def test_loss_terms_are_scalar_mean_squared_residuals(name):
    problem = get_problem(name)
    model = _small_mlp(problem)
    batch = problem.sample(jax.random.key(3), 8)
    losses = jax.jit(problem.loss_terms, static_argnums=0)(model, batch)
    residuals = jax.jit(problem.residuals, static_argnums=0)(model, batch)
    assert set(losses) == set(problem.term_names)
    for term in problem.term_names:
        assert residuals[term].shape == (batch[term].shape[0],)
        assert losses[term].shape == ()
        assert jnp.issubdtype(losses[term].dtype, jnp.floating)
        assert np.isfinite(float(losses[term]))
        np.testing.assert_allclose(
            losses[term], np.mean(np.square(residuals[term])), rtol=1e-5
        )


def test_helmholtz_residual_by_hand():
    """For u = x^2 the residual is 2 + u - q, the boundary residual is u itself."""
    from benchmarks.problems import helmholtz

    x = jnp.array([[0.3, -0.2], [0.5, 0.7]])
    res = helmholtz.residuals2(lambda p: p[0] ** 2, {"pde": x, "bc": x})
    np.testing.assert_allclose(
        res["pde"], 2.0 + x[:, 0] ** 2 - helmholtz.source(x), rtol=1e-5
    )
    np.testing.assert_allclose(res["bc"], x[:, 0] ** 2, rtol=1e-6)


# --- exact solutions -------------------------------------------------------------


@pytest.mark.parametrize("name", ANALYTIC)
def test_exact_solution_has_zero_residuals(name):
    problem = get_problem(name)
    with jax.enable_x64(True):
        batch = problem.sample(jax.random.key(4), 64)
        assert batch["pde"].dtype == jnp.float64
        residuals = jax.jit(problem.residuals, static_argnums=0)(problem.exact, batch)
        for term, r in residuals.items():
            assert r.dtype == jnp.float64
            assert float(jnp.max(jnp.abs(r))) < 1e-4, term


@pytest.mark.parametrize("name", ANALYTIC)
def test_exact_residuals_are_not_trivially_zero(name):
    """A wrong solution (exact + a bump) must give nonzero residuals in every term."""
    problem = get_problem(name)
    bump = lambda x: problem.exact(x) + 0.1 * jnp.cos(jnp.sum(x)) + 0.1
    with jax.enable_x64(True):
        batch = problem.sample(jax.random.key(4), 64)
        residuals = jax.jit(problem.residuals, static_argnums=0)(bump, batch)
        for term, r in residuals.items():
            assert float(jnp.max(jnp.abs(r))) > 1e-2, term


@pytest.mark.parametrize("name", sorted(TERMS))
def test_eval_points_and_reference(name):
    problem = get_problem(name)
    points = problem.eval_points()
    assert points.shape == (math.prod(problem.eval_shape), problem.input_dim)
    low, high = BOXES[name]
    np.testing.assert_allclose(points.min(axis=0), low)
    np.testing.assert_allclose(points.max(axis=0), high)
    ref_points, values = problem.reference()
    assert problem.reference()[1] is values  # computed once, then cached
    np.testing.assert_array_equal(ref_points, points)
    assert values.shape == (points.shape[0],)
    if name in ANALYTIC:
        assert values.dtype == np.float64
        np.testing.assert_allclose(values, problem.exact(points), atol=1e-6)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_mlp_on_every_problem(name):
    problem = get_problem(name)
    model = _small_mlp(problem)
    points, values = problem.reference()
    pred = jax.jit(lambda m, x: m(x))(model, points)
    assert pred.shape == values.shape
    error = float(relative_l2(pred, values))
    assert np.isfinite(error) and error > 0.0


# --- Burgers reference ------------------------------------------------------------

NU = 0.01 / np.pi
u_ref = burgers_module.reference_solution


def test_burgers_initial_and_boundary_values():
    x = np.linspace(-1.0, 1.0, 41)
    np.testing.assert_allclose(u_ref(x, 0.0), -np.sin(np.pi * x), atol=1e-12)
    t = np.linspace(0.0, 1.0, 21)
    np.testing.assert_allclose(u_ref(-1.0, t), 0.0, atol=1e-12)
    np.testing.assert_allclose(u_ref(1.0, t), 0.0, atol=1e-12)


def test_burgers_odd_in_x_and_zero_at_origin():
    x = np.linspace(0.0, 1.0, 17)[:, None]
    t = np.linspace(0.0, 1.0, 11)[None, :]
    np.testing.assert_allclose(u_ref(-x, t), -u_ref(x, t), atol=1e-12)
    assert abs(u_ref(0.0, 1.0)) < 1e-12
    # the front at x = 0 has formed: u jumps from about +0.6 to -0.6
    assert u_ref(-0.02, 1.0) > 0.5 and u_ref(0.02, 1.0) < -0.5


def test_burgers_steepest_slope_matches_basdevant():
    """Basdevant et al. (1986): min du/dx(0, t) = -152.00516 at t = 1.6037 / pi.

    That is the steepest slope over all times (about 0.5105, not 1 / pi: at t = 1 / pi,
    when the inviscid solution would break, the viscous slope is only about -34).
    """
    h = 1e-7
    slope = lambda t: (u_ref(h, t) - u_ref(-h, t)) / (2 * h)
    t_max = 1.6037 / np.pi
    assert slope(t_max) == pytest.approx(-152.00516, rel=1e-4)
    times = np.linspace(0.3, 0.7, 81)
    assert times[np.argmin(slope(times))] == pytest.approx(t_max, abs=0.005)
    assert slope(1.0 / np.pi) > -50.0


def test_burgers_reference_satisfies_the_pde_away_from_the_front():
    x = np.array([-0.7, -0.4, 0.4, 0.7])[:, None]
    t = np.array([0.1, 0.4, 0.8])[None, :]
    h = 1e-4
    u = u_ref(x, t)
    u_t = (u_ref(x, t + h) - u_ref(x, t - h)) / (2 * h)
    u_x = (u_ref(x + h, t) - u_ref(x - h, t)) / (2 * h)
    u_xx = (u_ref(x + h, t) - 2 * u + u_ref(x - h, t)) / h**2
    residual = u_t + u * u_x - NU * u_xx
    assert np.max(np.abs(u_t)) > 0.1  # the check is not vacuous
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)


def test_burgers_quadrature_is_converged():
    x = np.linspace(-1.0, 1.0, 33)[:, None]
    t = np.linspace(0.0, 1.0, 11)[None, :]
    np.testing.assert_allclose(u_ref(x, t, nodes=100), u_ref(x, t), atol=1e-10)


def test_burgers_exact_takes_points():
    points = np.array([[0.3, 0.5], [-0.3, 0.5]])
    np.testing.assert_allclose(
        get_problem("burgers").exact(points), u_ref([0.3, -0.3], 0.5)
    )


# --- helpers ------------------------------------------------------------------------


def test_relative_l2_by_hand():
    assert float(relative_l2(jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]))) == (
        pytest.approx(1.0 / math.sqrt(2.0))
    )
    assert float(relative_l2(jnp.ones((3, 1)), jnp.ones(3))) == 0.0
    with pytest.raises(ValueError, match="same number"):
        relative_l2(jnp.ones(2), jnp.ones(3))


def test_mlp_shapes_init_and_validation():
    model = MLP((2, 50, 50, 1), rngs=nnx.Rngs(0))
    points = jax.random.normal(jax.random.key(0), (5, 2))
    batched = model(points)
    single = jax.vmap(model)(points)
    assert batched.shape == (5,) and model(points[0]).shape == ()
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    kernel = model.linears[1].kernel[...]
    # Glorot normal: variance 2 / (fan_in + fan_out) = 1 / 50
    assert float(jnp.std(kernel)) == pytest.approx(math.sqrt(1 / 50), rel=0.1)
    for linear in model.linears:
        np.testing.assert_array_equal(linear.bias[...], 0.0)
    with pytest.raises(ValueError, match="layers"):
        MLP((2, 8, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros(3))
