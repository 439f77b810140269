"""The only code that knows uvicorn's internals: the node's server, lean protocol, frame writer, admission.

The module map and the direction of dependencies: docs/architecture.md.
"""
