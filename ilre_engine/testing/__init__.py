"""Slow, obvious reference implementations that tests and benchmarks check the engine against.

Nothing here is fast or meant for users: each function recomputes what an engine module
computes, the plain way (the model's own full forward, masks built over the whole sequence),
sharing no code with the module it checks. Both `tests/` and `benchmarks/` import it from
here, so neither depends on the other. The engine itself never imports this package
(`tests/test_architecture.py` holds that rule).
"""
