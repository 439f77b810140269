"""What the kernel says about a node process: CPU seconds, resident memory, and which pid listens on a port.

Linux only (``/proc``). The ``parse_*`` functions are pure, so they are unit-tested on
sample text; the others read ``/proc``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = [
    "busy_seconds",
    "cpu_of",
    "cpu_seconds",
    "listener_pids",
    "parse_busy_ticks",
    "parse_listening_inodes",
    "parse_schedstat_ns",
    "parse_stat_cpu_ticks",
    "parse_stat_user_system_ticks",
    "parse_vmrss_kib",
    "rss_kib",
    "rss_of",
    "runtime_of",
    "runtime_seconds",
    "user_system_seconds",
]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def parse_stat_user_system_ticks(text: str) -> tuple[int, int]:
    """(utime, stime), in clock ticks, from the text of ``/proc/<pid>/stat``.

    The command name (field 2) may hold spaces and parentheses, so fields are
    counted from the last ``)``: utime and stime are fields 14 and 15 (proc(5)).
    """
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime, in clock ticks, from the text of ``/proc/<pid>/stat``."""
    return sum(parse_stat_user_system_ticks(text))


def parse_schedstat_ns(text: str) -> int:
    """Nanoseconds a thread has run on a CPU, from the text of ``/proc/<pid>/task/<tid>/schedstat``."""
    return int(text.split()[0])


def parse_vmrss_kib(text: str) -> int:
    """VmRSS in KiB from the text of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a kernel thread, or the process is gone)")


def parse_listening_inodes(text: str, port: int) -> set[int]:
    """Socket inodes listening on ``port``, from the text of ``/proc/net/tcp`` or ``/proc/net/tcp6``."""
    inodes = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != _LISTEN:
            continue
        local_port = int(parts[1].rsplit(":", 1)[1], 16)
        if local_port == port:
            inodes.add(int(parts[9]))
    return inodes


def parse_busy_ticks(text: str) -> int:
    """Clock ticks all CPUs spent busy (not idle, not waiting for I/O), from the text of ``/proc/stat``."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    return sum(fields[:8]) - fields[3] - fields[4]


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (every process, every core)."""
    with open("/proc/stat") as fh:
        return parse_busy_ticks(fh.read()) / _TICKS


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        return parse_stat_cpu_ticks(fh.read()) / _TICKS


def runtime_seconds(pid: int) -> float:
    """CPU time the process's threads have run so far, in seconds, to the nanosecond (the scheduler's
    ``sum_exec_runtime``). utime + stime is the same figure rounded to clock ticks (10 ms): too coarse
    to compare Redis shards that each use a few tenths of a second in a run."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += parse_schedstat_ns(fh.read())
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total / 1e9


def runtime_of(pids: Iterable[int]) -> dict[int, float]:
    """:func:`runtime_seconds` of each process (:func:`cpu_of` on a kernel without schedstat); empty when
    one of them is gone."""
    if not os.path.exists("/proc/self/schedstat"):
        return cpu_of(pids)
    try:
        return {pid: runtime_seconds(pid) for pid in pids}
    except OSError:
        return {}


def user_system_seconds(pids: Iterable[int]) -> tuple[float, float]:
    """User and system CPU seconds the processes have used so far, summed: how much the kernel took."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            u, s = parse_stat_user_system_ticks(fh.read())
        user, system = user + u, system + s
    return user / _TICKS, system / _TICKS


def cpu_of(pids: Iterable[int]) -> dict[int, float]:
    """:func:`cpu_seconds` of each process; empty when one of them is gone."""
    try:
        return {pid: cpu_seconds(pid) for pid in pids}
    except OSError:
        return {}


def rss_of(pids: Iterable[int]) -> dict[int, int]:
    """:func:`rss_kib` of each process; empty when one of them is gone."""
    try:
        return {pid: rss_kib(pid) for pid in pids}
    except OSError:
        return {}


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        return parse_vmrss_kib(fh.read())


def listener_pids(port: int, *, proc: str = "/proc") -> list[int]:
    """The pids holding a socket that listens on TCP ``port`` (several with SO_REUSEPORT).

    Needs to read other processes' ``fd`` directories: the same user, or root.
    """
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{name}") as fh:
                inodes |= parse_listening_inodes(fh.read(), port)
        except FileNotFoundError:
            continue
    return sorted(_pids_holding(inodes, proc)) if inodes else []


def _pids_holding(inodes: Iterable[int], proc: str) -> set[int]:
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = set()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"{proc}/{entry}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(f"{proc}/{entry}/fd/{fd}") in targets:
                    pids.add(int(entry))
                    break
            except OSError:
                continue
    return pids
