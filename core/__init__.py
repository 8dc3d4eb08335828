"""Kairos decision core: catalog compiler, rule VM, profile state, adaptive models, arbitration.

`kairos.core.kernel` is the hot path (Cython, with a NumPy twin as the test oracle);
`kairos.core.engine.DecisionEngine` is the Python face the cluster's shards use;
`kairos.core.decision` holds what it answers with, and `kairos.core.request` the checks of a
request that every role shares, with the catalog's fallback decision.
"""
