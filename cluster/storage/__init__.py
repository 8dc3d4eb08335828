"""Storage: the stores (memory, directory, Redis), the shards' journal, and the packed customer
blocks that snapshots, homes and handoffs are made of."""
