"""Strict JAX settings for the whole suite (as Optimistix does).

x64 is on so that hand-computed reference values can be compared tightly; tests that
check float32 or bfloat16 behaviour build their arrays with an explicit dtype.

Dtype promotion stays "standard" here: optax's own Adam mixes dtypes (decay ** count,
a float to an int32 power), so every test that trains with it would fail under
"strict". The contract suite runs each method's update under "strict" instead
(``tests/test_contract.py::_update``), the two methods with an Optax optimizer inside
excepted.
"""

import os
import tempfile

# Eight CPU devices for the sharding tests; must be set before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


# The long tests first (each a minute or so in a fresh environment or a Sphinx
# build): under xdist's load scheduling they then run beside the many short tests
# instead of alone at the end of the run.
LONG_FIRST = (
    "test_floors.py",
    "test_notebooks.py",
    "test_docs.py",
    "test_readme.py",
    "test_pinn_runner.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


# One persistent compilation cache for the run, shared by the xdist workers: the
# same small programs (a method's update at the toy shapes) are compiled by many
# tests, and each is then compiled once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
jax.config.update(
    "jax_compilation_cache_dir",
    os.path.join(tempfile.gettempdir(), "optax_invloss-test-jax-cache", _RUN),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
