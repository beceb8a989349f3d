"""Strict JAX settings for the whole suite (as Optimistix does).

x64 is on so that hand-computed reference values can be compared tightly; tests that
check float32 or bfloat16 behaviour build their arrays with an explicit dtype.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
