"""Notifications: inboxes, topics and the notifier that fans out as jobs.

The module map and the direction of dependencies: docs/architecture.md.
"""
