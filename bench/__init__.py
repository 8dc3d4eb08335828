"""Kairos benchmarks: reproducible runs that write reports to bench/results/."""
