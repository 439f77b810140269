"""The node's garbage-collector settings.

CPython's cycle collector runs a young collection every 700 net allocations of
container objects and a full one whenever the survivors grew by a quarter. A
gateway node keeps tens of thousands of long-lived objects per thousand
connections (sessions, subscriptions, futures, protocol state), and a connect
storm allocates fast: with the default settings the collector was 11 % of a
node's CPU while it took 2,500 connects (py-spy ``--native``, BENCHMARKS.md,
round 2), and young collections every 10,000 allocations took 11-13 % off a
connect's instructions with 2,000 connections open. Almost nothing a node
allocates is cyclic garbage: requests and replies are freed by reference
counting. So collections are made rarer, and what exists at start-up (modules,
the app) is moved out of their reach.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_garbage_collector"]

# Young collections every 10,000 allocations instead of 700; older generations as before
# relative to it. Measured (BENCHMARKS.md, round 2): 50,000 cut no more CPU and held 0.8 KiB
# more per idle connection (garbage waiting longer); 10,000 costs no memory.
YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (10, 10)


def tune_garbage_collector() -> None:
    """Collect once, freeze what is alive now, and make later collections rarer.

    Call it once, after the app is built and before serving. Idempotent. Objects
    frozen here are never collected (they live as long as the process anyway).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
