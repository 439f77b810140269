"""The WebSocket gateway: the wire protocol (pure), sessions, connections, commands and local fan-out.

The module map and the direction of dependencies: docs/architecture.md.
"""
