"""pylog's benchmarks: pytest-benchmark suites (bench_*.py) and the side-by-side
comparison with the peers (``python -m benchmarks.compare``, see README.md)."""
