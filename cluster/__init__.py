"""Kairos runtime roles on Ray (gateway, shard, controller, learner) and the command line."""
