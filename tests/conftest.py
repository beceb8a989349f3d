"""Strict JAX settings for the whole suite (as Optimistix does).

x64 is on so that hand-computed reference values can be compared tightly; tests that
check float32 or bfloat16 behaviour build their arrays with an explicit dtype.
"""

import os

# Eight CPU devices for the sharding tests; must be set before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
