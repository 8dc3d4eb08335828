"""The systems Kairos is measured against in the same run: the floor, the Redis peer, and the
literal card (one Ray actor per customer)."""
