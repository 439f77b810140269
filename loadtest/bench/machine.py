"""Who else used the CPU: every process's utime + stime, read twice, the biggest differences.

The benchmarks report ``others_cpu_s`` (the machine's busy time minus the nodes', Redis's and
the bench's). On a shared machine that figure says *that* something else ran, this module says
*what*: a test suite next door, a kernel thread (``ksoftirqd`` doing loopback work), the
killed node's last breath. Linux only (``/proc``); the parser is pure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["parse_comm", "parse_ticks_with_children", "process_ticks", "top_users"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_comm(text: str) -> str:
    """The command name (field 2, in parentheses, possibly with spaces) of a ``/proc/<pid>/stat`` text."""
    return text[text.index("(") + 1 : text.rindex(")")]


def parse_ticks_with_children(text: str) -> int:
    """utime + stime + cutime + cstime (fields 14-17) of a ``/proc/<pid>/stat`` text, in clock ticks: a
    process's own CPU and that of its children that ended and were waited for (a test runner's)."""
    fields = text[text.rindex(")") + 2 :].split()
    return sum(int(value) for value in fields[11:15])


def process_ticks(proc: str = "/proc") -> dict[int, tuple[str, int]]:
    """Every process's (command name, CPU ticks of it and its ended children) now."""
    found: dict[int, tuple[str, int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat") as fh:
                text = fh.read()
        except OSError:  # gone meanwhile
            continue
        found[int(entry)] = (parse_comm(text), parse_ticks_with_children(text))
    return found


def top_users(
    before: dict[int, tuple[str, int]],
    after: dict[int, tuple[str, int]],
    *,
    exclude: Iterable[int] = (),
    count: int = 5,
) -> dict[str, float]:
    """The ``count`` processes (not in ``exclude``) that used the most CPU seconds between the readings.

    A process that started in between counts from zero; one that ended in between counts in its
    parent, once the parent has waited for it (``cutime``).
    """
    skip = set(exclude)
    used = []
    for pid, (name, ticks) in after.items():
        if pid in skip:
            continue
        delta = ticks - before.get(pid, (name, 0))[1]
        if delta > 0:
            used.append((delta, f"{name}[{pid}]"))
    used.sort(reverse=True)
    return {label: round(delta / _TICKS, 2) for delta, label in used[:count]}
