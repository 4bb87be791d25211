"""Benchmarks: each script writes JSON under benchmarks/results/; run them as `python -m benchmarks.<name>`."""
