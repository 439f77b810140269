"""``tidings up``: a local cluster on an embedded Valkey, for development and the tests.

The module map and the direction of dependencies: docs/architecture.md.
"""
