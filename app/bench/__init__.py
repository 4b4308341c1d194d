"""Benchmark scripts (`python -m app.bench.<name>`); they print figures and assert nothing."""
