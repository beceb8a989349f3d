"""One training run, either in one process or as one of two JAX processes.

``tests/test_two_processes.py`` starts this file twice as a script::

    python tests/_two_processes.py <coordinator address> <process id> <output .npz>

Each process calls ``jax.distributed.initialize`` (JAX's own runtime, CPU
collectives over gloo), holds one CPU device and half of the batch, and trains
the toy problem below for ``STEPS`` steps in the two ways docs/guides/devices.md
teaches: inside ``jax.shard_map`` with ``optax_invloss.sharded`` and
``optax_invloss.global_mean``, and under plain ``jax.jit`` with the batch as one
global array split over the processes (no wrapper). It writes the weights and
parameters after every step to the ``.npz`` file. The test imports
``train_one_process`` from here for the reference: one process, whole batch.

A process that cannot set up the CPU collectives prints a line starting with
``NO_CPU_COLLECTIVES:`` and the reason, and exits with ``NO_COLLECTIVES_EXIT``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_invloss as oil

POINTS = 16  # the whole batch; each of the two processes holds 8
STEPS = 3
NO_COLLECTIVES_EXIT = 3

METHODS = {
    "inverse_loss_ema": lambda: oil.inverse_loss(ema_decay=0.9),
    "lr_annealing": lambda: oil.lr_annealing(reference="pde", update_every=1),
}
GRADIENT_BASED = {"lr_annealing"}


def batch() -> np.ndarray:
    return np.linspace(-1.0, 1.0, POINTS)


def initial_params():
    # NumPy float64 (not weakly typed, unlike jnp.asarray(0.05)): the first step's
    # outputs then have the types of its inputs, and the step compiles once.
    return {"w": np.asarray([[0.1, -0.2]]), "b": np.asarray(0.05)}


def loss_terms(params, x):
    """A mean over the points of ``x`` and a term that depends on no point."""
    w, b = params["w"][0], params["b"]
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": jnp.mean((pred - jnp.sin(3.0 * x)) ** 2),
        "bc": (w[0] + w[1] + b - 1.0) ** 2 + 1e-3,
    }


def _optimizer(method):
    # Only the structure and dtype of the losses are read here; no eager op runs
    # (each would compile a program of its own). float64, the losses' dtype under
    # x64: Python floats would give a float32 state, which the first update turns
    # into float64, compiling the step a second time.
    zero = np.float64(0.0)
    return oil.with_weighting(optax.adam(0.05), method, {"pde": zero, "bc": zero})


def _step(txs, reduce=lambda losses: losses):
    """The training step of docs/guides/devices.md, for every method side by side.

    ``txs``: the wrapped optimizer of each method, by name; the carry holds each
    method's ``(params, opt_state)``. ``reduce`` makes the losses global. One
    program for all the methods: each compile costs seconds on a loaded CPU.
    """

    def one(name, tx, params, opt_state, x):
        weights = oil.loss_weights(opt_state)

        def total(p):
            local = loss_terms(p, x)
            return oil.weighted_sum(reduce(local), weights), local

        (_, local), grads = jax.value_and_grad(total, has_aux=True)(params)
        extra = (
            {"loss_fn": lambda p: loss_terms(p, x)} if name in GRADIENT_BASED else {}
        )
        updates, opt_state = tx.update(grads, opt_state, params, losses=local, **extra)
        return optax.apply_updates(params, updates), opt_state

    def step(carry, x):
        return {name: one(name, tx, *carry[name], x) for name, tx in txs.items()}

    return step


def _train(step, txs, x, place=lambda tree: tree) -> dict[str, np.ndarray]:
    """``STEPS`` steps from ``initial_params``: the weights and params after each.

    Keys ``"<method>/<quantity>"``, each an array with one row per step.
    """
    params = initial_params()
    init = jax.jit(lambda p: {name: (p, tx.init(p)) for name, tx in txs.items()})
    carry = place(init(params))
    history = {}
    for _ in range(STEPS):
        carry = step(carry, x)
        for name, (params, opt_state) in carry.items():
            weights = oil.loss_weights(opt_state)
            for key, value in (
                ("weight_pde", weights["pde"]),
                ("weight_bc", weights["bc"]),
                ("w", params["w"]),
                ("b", params["b"]),
            ):
                history.setdefault(f"{name}/{key}", []).append(_local(value))
    return {k: np.stack(v) for k, v in history.items()}


def _local(x) -> np.ndarray:
    """This process's copy of a replicated (or single-device) array."""
    return np.asarray(x.addressable_shards[0].data)


def _optimizers(wrap=lambda method: method):
    return {name: _optimizer(wrap(make())) for name, make in METHODS.items()}


def train_one_process() -> dict[str, np.ndarray]:
    """The reference: one process, one device, the whole batch."""
    txs = _optimizers()
    return _train(jax.jit(_step(txs)), txs, batch())


def _train_shard_map(mesh, x_global, place):
    """``shard_map``: each process's local losses, the ``sharded`` method."""
    P = jax.sharding.PartitionSpec
    txs = _optimizers(lambda method: oil.sharded(method, "data"))
    step = _step(txs, reduce=lambda local: oil.global_mean(local, "data"))
    step = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())
    return _train(jax.jit(step), txs, x_global, place)


def _train_jit(x_global, place):
    """Plain ``jax.jit``: the batch is one global array, no wrapper."""
    txs = _optimizers()
    return _train(jax.jit(_step(txs)), txs, x_global, place)


def _start(coordinator: str, process_id: int):
    """``jax.distributed.initialize`` with the CPU collectives, and a first psum."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=2,
            process_id=process_id,
            initialization_timeout=60,
        )
        mesh = jax.make_mesh((2,), ("data",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        ones = jax.make_array_from_process_local_data(sharding, np.ones(1))
        total = _local(jax.jit(jnp.sum, out_shardings=_replicated(mesh))(ones))
    except Exception as error:  # noqa: BLE001 - reported, and the test skips on it
        print(f"NO_CPU_COLLECTIVES: {type(error).__name__}: {error}", flush=True)
        sys.exit(NO_COLLECTIVES_EXIT)
    if total != 2.0 or jax.process_count() != 2 or len(jax.devices()) != 2:
        print(
            f"NO_CPU_COLLECTIVES: sum over 2 processes gave {total}, "
            f"process_count {jax.process_count()}, devices {jax.devices()}",
            flush=True,
        )
        sys.exit(NO_COLLECTIVES_EXIT)
    return mesh


def _replicated(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def main(coordinator: str, process_id: int, out: str) -> None:
    jax.config.update("jax_enable_x64", True)  # as the test suite (tests/conftest.py)
    mesh = _start(coordinator, process_id)
    P = jax.sharding.PartitionSpec
    half = POINTS // 2
    local_x = batch()[process_id * half : (process_id + 1) * half]
    x_global = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, P("data")), local_x
    )

    def place(tree):  # the same value in every process, on every device
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(
                _replicated(mesh), np.asarray(a)
            ),
            tree,
        )

    runs = {
        "shard_map": _train_shard_map(mesh, x_global, place),
        "jit": _train_jit(x_global, place),
    }
    results = {
        f"{path}/{key}": value
        for path, history in runs.items()
        for key, value in history.items()
    }
    np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
