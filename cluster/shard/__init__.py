"""The shard host: a Ray actor hosting the customer actors of its partitions, composed of
parts that each own their state (residency, watches, identity, handoff, catalogs, durability)."""
