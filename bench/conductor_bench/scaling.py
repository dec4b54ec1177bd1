"""(s) /auth/me on one worker against two, in alternating short rounds.

The (b) rows of one and of two workers are minutes apart, and this machine's speed drifts
more than that between them (a one-worker (b) of 2,300/s and of 3,300/s a minute later, same
code), so their quotient says as much about the drift as about the workers. Here both servers
run side by side on one database, idle but for the one under load, and wrk alternates
between them: each round times one worker and then two (the next round in the opposite
order), so that each pair of figures was taken seconds apart. The ratio is the median of the
rounds' ratios.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from conductor_bench.common import log
from conductor_bench.load import Load, Result
from conductor_bench.scenarios import Options, own_database, server_env, write_lines
from conductor_bench.seed import seed
from conductor_bench.servers import Postgres, Server, clean_env
from conductor_bench.system import postgres_backends, wait_quiet


@dataclass
class Scaling:
    db: str
    seconds: int
    one: list[Result] = field(default_factory=list)
    two: list[Result] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [b.rps / a.rps if a.rps else 0.0 for a, b in zip(self.one, self.two, strict=True)]

    @property
    def ratio(self) -> float:
        """The median round: one disturbed round moves it no more than any other."""
        return statistics.median(self.ratios) if self.ratios else 0.0

    @property
    def ceilings(self) -> list[float | None]:
        """Each round's `_ceiling`, as `ratios` gives each round's ratio."""
        return [_ceiling(a, b) for a, b in zip(self.one, self.two, strict=True)]

    @property
    def ceiling(self) -> float | None:
        """The median round's ceiling (None when the CPU was not sampled)."""
        found = [c for c in self.ceilings if c is not None]
        return statistics.median(found) if found else None


def _ceiling(one: Result, two: Result) -> float | None:
    """The CPU the two workers had over the CPU the one worker had: the ratio of a round in
    which a request cost each worker as much CPU on either server. On a machine whose cores
    wrk and the database share, it is what the cores left to the workers allow."""
    if not one.server_cpu or two.server_cpu is None:
        return None
    return two.server_cpu / one.server_cpu


def measure_scaling(
    db: str,
    opts: Options,
    rounds: int,
    seconds: int,
    server_bin: str,
    postgres: Postgres | None,
    load_tool: Load,
    workdir: Path,
) -> Scaling:
    tag = f"{db}-scaling"
    base = workdir / tag
    env = server_env(opts, base / "data")
    result = Scaling(db, seconds)
    with contextlib.ExitStack() as stack:
        dbname = own_database(db, postgres, stack, env)
        servers: dict[int, Server] = {}
        # One after the other: the first creates the schema and the signing keys, which the
        # second then shares, so either accepts the other's tokens.
        for workers in (1, 2):
            logs = base / f"w{workers}"
            logs.mkdir(parents=True)
            server = Server(server_bin, logs, workers, clean_env(**env))
            stack.callback(server.stop)
            log(f"[{tag}] starting conductor-api serve --workers {workers} on port {server.port}")
            server.start()
            servers[workers] = server
        n_users = max(2 * opts.connections, 8)
        pools = seed(servers[1].url, n_users)
        tokens = str(write_lines(base / "access.txt", pools.access_tokens))

        def db_pids() -> list[int]:
            return postgres_backends(dbname) if db == "postgres" else []

        def run(workers: int, length: int, name: str) -> Result:
            server = servers[workers]
            return load_tool.run(
                server.url + "/", "me.lua", length, {"BENCH_TOKENS": tokens}, name, server,
                db_pids,
            )  # fmt: skip

        if opts.quiet_wait > 0:
            wait_quiet(opts.quiet_wait)
        # Warm both (connection pools, caches) before anything counts.
        run(1, 1, f"{tag}-warm1")
        run(2, 1, f"{tag}-warm2")
        log(f"[{tag}] {rounds} rounds of {seconds}s on 1 worker and {seconds}s on 2, alternating")
        for i in range(rounds):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            got = {w: run(w, seconds, f"{tag}-{i}w{w}") for w in order}
            result.one.append(got[1])
            result.two.append(got[2])
            log(
                f"[{tag}] round {i + 1}: {got[1].rps:,.0f} and {got[2].rps:,.0f} req/s, "
                f"{result.ratios[-1]:.2f} x"
            )
    return result
