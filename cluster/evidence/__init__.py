"""Evidence before go-live: the decision log's records, and what is read from them offline
(replay of a candidate catalog, off-policy estimates, control groups)."""
