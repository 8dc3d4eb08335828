"""Kairos benchmarks: reproducible runs that write reports to bench/results/."""
from kairos.cluster.raytuning import own_token

# Before the bench's Ray starts (bench.systems.ray_nodes): it runs with a token of its own,
# never writing one into ~/.ray, and this process and its generators talk to it with it.
own_token()
