"""Background jobs that run once across the cluster: queue contracts, stores and the worker.

The module map and the direction of dependencies: docs/architecture.md.
"""
