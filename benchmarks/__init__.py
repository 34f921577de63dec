"""netsip's benchmarks: ``python -m benchmarks`` runs them all (see ``__main__``).

Benchmarks are not tests: they print figures and write ``docs/performance.*``;
nothing here asserts a timing. The single-purpose scripts (``bench_*.py``)
still run on their own.
"""
