"""The gateway: the kairos.v1 gRPC services channels call, one per node (a Ray actor)."""
