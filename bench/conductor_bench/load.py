"""Load: wrk runs a Lua scenario and reports one JSON line (Result); the Probe measures
latency at a low steady rate while wrk floods the server."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conductor_bench.common import HOST, LUA_DIR, BenchError
from conductor_bench.servers import Server
from conductor_bench.system import Sampler, children_cpu_seconds


@dataclass
class Result:
    scenario: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_peak: int = 0  # bytes, summed over workers
    worker_rss: list[int] = field(default_factory=list)  # bytes, each worker's peak
    # CPU cores busy on average: server workers, PostgreSQL backends, wrk, everything else
    server_cpu: float | None = None
    worker_cpu: list[float] = field(default_factory=list)  # each worker's share
    hash_cpu: float | None = None  # the workers' hashing threads (part of server_cpu)
    db_cpu: float | None = None
    loadgen_cpu: float | None = None
    other_cpu: float | None = None
    note: str = ""
    attempts: int = 1
    probe: Result | None = None  # (e), measured during this (d)
    worker_rss_after: list[int] = field(default_factory=list)  # bytes, 2 s after the load

    bad_responses: int = 0  # completed requests answered with a status >= 400

    @property
    def rps(self) -> float:
        """Successful responses per second: fast refusals must not count as throughput."""
        good = self.requests - self.bad_responses
        return good / self.seconds if self.seconds > 0 else 0.0


def wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    m = re.search(r"wrk\s+(\S+)", proc.stdout + proc.stderr)
    return m.group(1) if m else "unknown"


@dataclass
class Load:
    wrk: str
    threads: int
    connections: int
    timeout: int
    workdir: Path

    def start(
        self, url: str, script: str, seconds: int, env: dict[str, str], name: str
    ) -> subprocess.Popen[str]:
        cmd = [self.wrk, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s"]
        cmd += [f"--timeout={self.timeout}s", "--latency", "-s", str(LUA_DIR / script), url]
        full_env = {
            **os.environ,
            "BENCH_LUA_DIR": str(LUA_DIR),
            "BENCH_THREADS": str(self.threads),
            **env,
        }
        out = (self.workdir / f"wrk-{name}.out").open("w")
        try:
            return subprocess.Popen(
                cmd,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        finally:
            out.close()

    def finish(self, proc: subprocess.Popen[str], seconds: int, name: str) -> Result:
        try:
            rc = proc.wait(timeout=seconds + self.timeout + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise BenchError(f"wrk did not finish scenario {name} in time") from None
        text = (self.workdir / f"wrk-{name}.out").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
        if rc != 0 or line is None:
            last = (text.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"wrk failed in scenario {name} (status {rc}): {last}")
        data = json.loads(line.removeprefix("BENCHJSON "))
        e = data["errors"]
        lat = data["latency_us"]
        res = Result(
            scenario=name,
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=lat["p50"] / 1000,
            p99_ms=lat["p99"] / 1000,
            errors=e["status"] + e["connect"] + e["read"] + e["write"] + e["timeout"],
            statuses={k: v for k, v in sorted(data["statuses"].items())},
            bad_responses=e["status"],
        )
        socket_errors = {k: e[k] for k in ("connect", "read", "write", "timeout") if e[k]}
        notes = []
        if socket_errors:
            notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in socket_errors.items()))
        if e["status"]:
            bad = {k: v for k, v in res.statuses.items() if not k.startswith("2")}
            notes.append(f"HTTP >= 400: {e['status']}" + (f" {bad}" if bad else ""))
        if data.get("starved"):
            notes.append(f"{data['starved']} refreshes found the token queue empty")
        res.note = "; ".join(notes)
        return res

    def run(
        self,
        url: str,
        script: str,
        seconds: int,
        env: dict[str, str],
        name: str,
        server: Server,
        db_pids: Callable[[], list[int]],
        during: Callable[[], None] | None = None,
    ) -> Result:
        cpu0 = children_cpu_seconds()
        with Sampler(server, db_pids) as sampler:
            proc = self.start(url, script, seconds, env, name)
            try:
                if during is not None:
                    during()
                res = self.finish(proc, seconds, name)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        elapsed = sampler.elapsed or 1.0
        res.loadgen_cpu = (children_cpu_seconds() - cpu0) / elapsed
        res.rss_peak = sampler.peak_sum
        res.worker_rss = [sampler.peak_per_worker.get(pid, 0) for pid in server.worker_pids()]
        res.server_cpu = sampler.server_cpu
        res.worker_cpu = sampler.worker_cpu
        res.hash_cpu = sampler.hash_cpu
        if uneven(res):
            split = "+".join(f"{x:.2f}" for x in res.worker_cpu)
            res.note = "; ".join(
                x
                for x in (
                    res.note,
                    f"uneven load: worker CPU {split} (one worker accepted most connections)",
                )
                if x
            )
        res.db_cpu = sampler.db_cpu
        # What the rest of the machine used meanwhile (this script's own share, the sampler
        # and the (e) probe, is left out): other people's work skews every figure.
        res.other_cpu = max(
            0.0,
            sampler.machine_cpu
            - sampler.server_cpu
            - sampler.db_cpu
            - res.loadgen_cpu
            - sampler.self_cpu,
        )
        if res.requests > 0 and res.errors >= res.requests:
            raise BenchError(
                f"scenario {name}: every one of {res.requests} requests failed "
                f"({res.note or 'no detail'})"
            )
        if res.requests == 0:
            raise BenchError(f"scenario {name}: wrk completed no request")
        return res


class Probe:
    """A steady GET /health/live at `rate` per second on one keep-alive connection. Latency is
    measured from each request's scheduled send time, so a stall that delays the requests
    behind it counts for all of them (no coordinated omission)."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.interval = 1.0 / rate
        self.latencies: list[float] = []
        self.errors = 0
        self.seconds = 0.0

    def run(self, seconds: float) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        start = time.perf_counter()
        i = 0
        try:
            while True:
                scheduled = start + i * self.interval
                if scheduled - start >= seconds:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    conn.request("GET", "/health/live")
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                self.latencies.append(time.perf_counter() - scheduled)
                if not ok:
                    self.errors += 1
                i += 1
        finally:
            conn.close()
        self.seconds = time.perf_counter() - start

    def result(self) -> Result:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            if not lat:
                return 0.0
            return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat)) - 1))] * 1000

        return Result(
            scenario="e",
            requests=len(lat),
            seconds=self.seconds,
            p50_ms=pct(50),
            p99_ms=pct(99),
            errors=self.errors,
            bad_responses=self.errors,
        )


def uneven(r: Result) -> bool:
    """One of several workers did (nearly) all the work: the kernel handed it most of wrk's
    connections, and the figures show one worker, not the server."""
    return len(r.worker_cpu) > 1 and max(r.worker_cpu) > 0.8 * sum(r.worker_cpu)


def disturbance(r: Result) -> float:
    """How far a run is from a fair one: other processes' cores, plus 1 if uneven."""
    return (r.other_cpu or 0.0) + (1.0 if uneven(r) else 0.0)
