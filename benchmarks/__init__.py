"""Benchmarks for optax_invloss: PINN problems and the comparison runner."""
