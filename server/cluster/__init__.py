"""What joins the nodes: the backplane, presence, rooms, the control plane, liveness and leases.

The module map and the direction of dependencies: docs/architecture.md.
"""
