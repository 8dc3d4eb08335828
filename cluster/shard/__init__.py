"""The shard host: a Ray actor (actor.py) around a Ray-free ShardHost (host.py) that runs a
Shard (shard.py), the host of the customer actors of its partitions, composed of parts that
each own their state (residency, watches, identities, handoff, catalogs, durability)."""
