"""Control: the controller (shard placement, partition map, catalog versions), the learner
(the global model posterior) and starting the runtime on Ray."""
