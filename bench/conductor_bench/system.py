"""The machine, read from /proc: processes' memory and CPU, the CPU of everything else,
and the Sampler that watches a server while a scenario runs."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from conductor_bench.common import HOST

if TYPE_CHECKING:
    from conductor_bench.servers import Server


# What a worker's hashing threads are called in the system (the server's
# `passwords.HASH_THREAD_NAME`).
HASH_THREADS = "pwhash"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def proc_children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/*/stat."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def proc_rss(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _stat_cpu(path: str) -> tuple[str, float] | None:
    """A process's or thread's name and user + system CPU seconds, from its /proc `stat`
    file (None if it is gone)."""
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    name, rest = stat[stat.index("(") + 1 :].rsplit(")", 1)
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    found = _stat_cpu(f"/proc/{pid}/stat")
    return found[1] if found else 0.0


def threads_cpu_seconds(pid: int, name: str) -> float:
    """User + system CPU time so far of the threads of `pid` that the system names `name`
    (a server worker's hashing threads: `pwhash`)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = 0.0
    for tid in tids:
        found = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if found is not None and found[0] == name:
            total += found[1]
    return total


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all but idle and iowait), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def postgres_backends(dbname: str) -> list[int]:
    """PostgreSQL backend processes connected to `dbname` (their title names the database)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            title = proc_cmdline(int(entry))
            if title.startswith("postgres: ") and f" {dbname} " in title:
                pids.append(int(entry))
    return pids


class Sampler:
    """While a scenario runs: the summed RSS of the workers (sampled), and the CPU time of the
    workers (and of their hashing threads), of the PostgreSQL backends serving the run's
    database, and of the whole machine."""

    def __init__(
        self, server: Server, db_pids: Callable[[], list[int]], interval: float = 0.25
    ) -> None:
        self.server = server
        self.db_pids = db_pids
        self.interval = interval
        self.peak_sum = 0
        self.last_per_worker: dict[int, int] = {}
        self.peak_per_worker: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        # pid -> (CPU seconds when first seen, latest CPU seconds), per group
        self._cpu: dict[str, dict[int, tuple[float, float]]] = {"server": {}, "db": {}, "hash": {}}
        self._t0 = 0.0
        self._machine0 = 0.0
        self._self0 = 0.0
        self.elapsed = 0.0
        self.server_cpu = 0.0
        self.worker_cpu: list[float] = []
        self.hash_cpu = 0.0
        self.db_cpu = 0.0
        self.machine_cpu = 0.0
        self.self_cpu = 0.0

    def _track(self, group: str, pids: list[int], first: bool, cpu: Callable[[int], float]) -> None:
        seen = self._cpu[group]
        for pid in pids:
            now = cpu(pid)
            if pid in seen:
                seen[pid] = (seen[pid][0], max(now, seen[pid][1]))
            else:
                # A process that appears during the scenario spent all its CPU time in it.
                seen[pid] = (now if first else 0.0, now)

    def sample(self, first: bool = False) -> None:
        workers = self.server.worker_pids()
        per = {pid: proc_rss(pid) for pid in workers}
        with self._lock:
            self.last_per_worker = per
            self.peak_sum = max(self.peak_sum, sum(per.values()))
            for pid, rss in per.items():
                self.peak_per_worker[pid] = max(self.peak_per_worker.get(pid, 0), rss)
            self._track("server", workers, first, proc_cpu_seconds)
            self._track("hash", workers, first, partial(threads_cpu_seconds, name=HASH_THREADS))
            self._track("db", self.db_pids(), first, proc_cpu_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._machine0 = machine_busy_seconds()
        self._self0 = self_cpu_seconds()
        self.sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.elapsed = time.monotonic() - self._t0
        if self.elapsed <= 0:
            return

        def used(group: str) -> float:
            return sum(b - a for a, b in self._cpu[group].values()) / self.elapsed

        self.server_cpu = used("server")
        self.worker_cpu = [
            (b - a) / self.elapsed for _, (a, b) in sorted(self._cpu["server"].items())
        ]
        self.hash_cpu = used("hash")
        self.db_cpu = used("db")
        self.machine_cpu = (machine_busy_seconds() - self._machine0) / self.elapsed
        self.self_cpu = (self_cpu_seconds() - self._self0) / self.elapsed


def wait_quiet(max_wait: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (at most `max_wait` s) until the rest of the machine uses under `threshold` cores
    over one second. Returns the seconds waited and the last reading."""
    start = time.monotonic()
    busy = 0.0
    while True:
        m0, s0, c0, t0 = machine_busy_seconds(), self_cpu_seconds(), children_cpu_seconds(), 0.0
        t0 = time.monotonic()
        time.sleep(1.0)
        dt = time.monotonic() - t0
        busy = (
            machine_busy_seconds() - m0 - (self_cpu_seconds() - s0) - (children_cpu_seconds() - c0)
        ) / dt
        waited = time.monotonic() - start
        if busy < threshold or waited >= max_wait:
            return waited, busy
