"""Benchmarks that ship with the package: run-time odometry against baselines and the truth."""
