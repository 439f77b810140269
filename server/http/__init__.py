"""The ASGI app and the HTTP API for backends: routes, metrics, the Host check.

The module map and the direction of dependencies: docs/architecture.md.
"""
