"""The node's garbage-collector settings (server/gc_tuning.py), applied in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

from tidings.server.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD


def test_tuning_freezes_what_exists_and_makes_collections_rarer() -> None:
    """After tune_garbage_collector(): start-up objects frozen, thresholds raised, collection still on."""
    script = (
        "import gc, json\n"
        "from tidings.server.gc_tuning import tune_garbage_collector\n"
        "before = gc.get_freeze_count()\n"
        "tune_garbage_collector()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(), gc.isenabled()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    before, frozen, threshold, enabled = json.loads(out.stdout)
    assert before == 0
    assert frozen > 1000  # the modules and objects of start-up
    assert threshold == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
    assert YOUNG_THRESHOLD > 700  # rarer than CPython's default
    assert enabled  # cycles are still collected


def test_tidings_serve_tunes_the_collector() -> None:
    """The serve command calls it right before serving (after the app is built)."""
    import inspect

    from tidings.server import cli

    source = inspect.getsource(cli.serve)
    assert source.index("tune_garbage_collector()") < source.index("server.run(")
