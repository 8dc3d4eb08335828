"""The agent's web console: Starlette pages over a gateway's gRPC API (see app.py)."""
