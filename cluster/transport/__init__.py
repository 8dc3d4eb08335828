"""Transport: the client that routes requests to the owning shard, the data plane that carries
their batches, and the Backend interface behind which Ray sits."""
