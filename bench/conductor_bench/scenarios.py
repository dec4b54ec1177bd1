"""One server configuration (database, worker count): scenarios (a) to (f) in order."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conductor_bench.common import BUSY_CORES, SCENARIOS, BenchError, log
from conductor_bench.hashbound import HashBound, measure
from conductor_bench.load import Load, Probe, Result, disturbance, uneven
from conductor_bench.seed import fresh_refresh_tokens, seed
from conductor_bench.servers import Postgres, Server, clean_env
from conductor_bench.system import postgres_backends, proc_rss, wait_quiet


@dataclass
class ConfigResult:
    db: str
    workers: int
    results: dict[str, Result]
    hash: HashBound  # the server's hasher, timed alone just before (d)
    hash_after: HashBound | None = None  # and again just after it
    # (d) again in short rounds, each beside a timing of the bound: (logins/s, bound/s,
    # cores the hashing threads used during the logins).
    login_rounds: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def login_ratios(self) -> list[float]:
        """Each round's logins per second over the bound timed beside them."""
        return [login / bound if bound else 0.0 for login, bound, _ in self.login_rounds]

    @property
    def login_ratio(self) -> float:
        """(d)'s figure: the median round's ratio (one round that the machine's drift or a
        neighbour disturbed moves it no more than any other); without rounds, (d)'s own
        run over the mean bound."""
        return statistics.median(self.login_ratios) if self.login_rounds else self.login_row_ratio

    @property
    def login_row_ratio(self) -> float:
        """(d)'s own run over the mean bound."""
        d = self.results.get("d")
        return d.rps / self.hash_bound if d is not None and self.hash_bound else 0.0

    @property
    def hash_bound(self) -> float:
        """Logins per second at best: the mean of the timings before and after (d), so that
        a machine whose speed drifts during (d) (a virtual machine's neighbours) moves the
        bound with it rather than by whichever moment the one timing caught."""
        if self.hash_after is None:
            return self.hash.bound
        return (self.hash.bound + self.hash_after.bound) / 2

    @property
    def hash_drift(self) -> float:
        """How much the two timings differ, as a share of the lower one (0 with one)."""
        if self.hash_after is None:
            return 0.0
        low, high = sorted((self.hash.bound, self.hash_after.bound))
        return high / low - 1 if low else 0.0


@dataclass
class Options:
    duration: int
    mixed_duration: int
    connections: int
    threads: int
    probe_rate: float
    mix: str
    hash_rounds: int
    server_log_level: str | None
    quiet_wait: float
    server_env: dict[str, str]
    retries: int
    patience: float  # seconds in all for quiet waits and repeated runs; spent as used
    login_rounds: int = 5  # (d)'s alternating rounds of the bound and of logins
    login_round_seconds: int = 4

    def spend(self, seconds: float) -> None:
        self.patience = max(0.0, self.patience - seconds)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def server_env(opts: Options, data: Path) -> dict[str, str]:
    """The server's settings: a fresh data directory `data` (made here), and room for the
    seeding, which registers every user from one address."""
    data.mkdir(parents=True)
    env = {
        "CONDUCTOR_DATA_DIR": str(data),
        "ALLOW_REGISTRATION": "true",
        "MAX_REGISTRATIONS_PER_IP": "1000000",
    }
    if opts.server_log_level:
        env["LOG_LEVEL"] = opts.server_log_level
    env.update(opts.server_env)
    return env


def own_database(
    db: str, postgres: Postgres | None, stack: contextlib.ExitStack, env: dict[str, str]
) -> str:
    """On PostgreSQL, a fresh database for one group of runs, dropped with `stack` and named
    in the server's `env`; its name ("" on SQLite, whose file is in the data directory)."""
    if db != "postgres":
        return ""
    assert postgres is not None
    name = postgres.create()
    stack.callback(postgres.drop, name)
    env["DATABASE_URL"] = postgres.url(name)
    return name


def run_config(
    db: str,
    workers: int,
    opts: Options,
    server_bin: str,
    server_python: str,
    postgres: Postgres | None,
    load_tool: Load,
    workdir: Path,
) -> ConfigResult:
    tag = f"{db}-w{workers}"
    cfg_dir = workdir / tag
    env = server_env(opts, cfg_dir / "data")
    with contextlib.ExitStack() as stack:
        dbname = own_database(db, postgres, stack, env)
        server = Server(server_bin, cfg_dir, workers, clean_env(**env))
        stack.callback(server.stop)
        log(f"[{tag}] starting conductor-api serve --workers {workers} on port {server.port}")
        server.start()

        c = opts.connections
        n_users = max(2 * c, 8)
        n_refresh = 2 * c
        log(f"[{tag}] seeding {n_users} users and {n_users} access tokens")
        pools = seed(server.url, n_users)
        tokens = write_lines(cfg_dir / "access.txt", pools.access_tokens)
        users = write_lines(
            cfg_dir / "users.txt",
            [f"{u.username}\t{u.password}\tbench-login" for u in pools.users],
        )
        url = server.url
        d = opts.duration
        results: dict[str, Result] = {}

        def db_pids() -> list[int]:
            return postgres_backends(dbname) if db == "postgres" else []

        def quiet(what: str) -> str:
            """Wait for the rest of the machine to go quiet; a note if it did not."""
            if opts.quiet_wait <= 0 or opts.patience < 1:
                return ""
            waited, busy = wait_quiet(min(opts.quiet_wait, opts.patience))
            opts.spend(max(0.0, waited - 1.0))  # the first second is the reading itself
            if busy >= 0.3:
                log(f"[{tag}] machine still busy ({busy:.2f} cores) before {what}; going on")
                return f"other processes used {busy:.2f} cores just before"
            if waited > 1.5:
                log(f"[{tag}] waited {waited:.0f}s for other processes to quieten")
            return ""

        def scenario(
            key: str,
            script: str,
            prepare: Callable[[], dict[str, str]],
            path: str = "/",
            seconds: int = d,
            probe_rate: float = 0.0,
            retries: int = opts.retries,
        ) -> Result:
            """Run one scenario; if other processes took CPU meanwhile, wait for quiet and
            run it again (up to `retries` times), keeping the least disturbed attempt.
            `prepare` gives the pools for an attempt (fresh refresh chains each time)."""
            best: Result | None = None
            for attempt in range(retries + 1):
                busy_note = quiet(key)
                env = prepare()
                probe = Probe(server.port, probe_rate) if probe_rate else None
                during = None
                if probe is not None:
                    # The probe starts once the flood is under way and stops before it ends.
                    lead_in = min(1.0, seconds * 0.2)

                    def during(p: Probe = probe, lead_in: float = lead_in) -> None:
                        time.sleep(lead_in)
                        p.run(max(0.5, seconds - 2 * lead_in))

                opened0 = postgres.sessions_opened(dbname) if postgres and dbname else None
                again = f" (attempt {attempt + 1})" if attempt else ""
                log(f"[{tag}] {SCENARIOS[key]} for {seconds}s{again}")
                res = load_tool.run(
                    url + path, script, seconds, env, f"{tag}-{key}{attempt}", server, db_pids,
                    during,
                )  # fmt: skip
                if server.proc is not None and server.proc.poll() is not None:
                    raise BenchError(
                        f"server [{tag}] died in scenario {key}: {server.last_log_line()}"
                    )
                churn = ""
                if opened0 is not None and postgres is not None:
                    opened = (postgres.sessions_opened(dbname) or opened0) - opened0
                    if opened > 20 * workers:
                        # More than filling the pools would take: connections opened and
                        # closed under load. Each costs a backend fork, and short-lived
                        # backends escape the sampler, so their CPU shows as "other".
                        churn = f"the server opened {opened} new PostgreSQL connections"
                res.note = "; ".join(x for x in (res.note, busy_note, churn) if x)
                res.attempts = attempt + 1
                if probe is not None:
                    res.probe = probe.result()
                if best is None or disturbance(res) < disturbance(best):
                    best = res
                if attempt > 0:
                    opts.spend(res.seconds)
                if disturbance(res) <= BUSY_CORES:
                    break
                if attempt >= retries or opts.patience < seconds:
                    break
                why = (
                    "one worker took most connections"
                    if uneven(res)
                    else f"other processes used {res.other_cpu:.2f} cores"
                )
                log(f"[{tag}] {why}; again")
            assert best is not None
            if attempt > 0:
                best.note = "; ".join(
                    x for x in (best.note, f"kept attempt {best.attempts} of {attempt + 1}") if x
                )
            results[key] = best
            return best

        def chains(name: str, tag_: str) -> Callable[[], dict[str, str]]:
            def make() -> dict[str, str]:
                fresh = fresh_refresh_tokens(url, pools.users, n_refresh, tag_)
                return {name: str(write_lines(cfg_dir / f"{tag_}.txt", fresh))}

            return make

        scenario("a", "health.lua", dict, "/health/live")
        scenario("b", "me.lua", lambda: {"BENCH_TOKENS": str(tokens)})
        scenario("c", "refresh.lua", chains("BENCH_TOKENS", "bench-rf"))

        quiet("the Argon2id timing")
        log(f"[{tag}] timing {opts.hash_rounds} Argon2id verifies with the server's hasher")

        def time_bound() -> HashBound:
            return measure(server_python, opts.hash_rounds, clean_env(**env))

        hash_bound = time_bound()

        log(f"[{tag}] (e) probes /health/live at {opts.probe_rate:g} req/s during (d)")
        login = scenario(
            "d", "login.lua", lambda: {"BENCH_USERS": str(users)}, probe_rate=opts.probe_rate
        )
        assert login.probe is not None
        log(f"[{tag}] timing the Argon2id verifies again, after (d)")
        hash_after = time_bound()
        login_rounds = alternate_login_and_bound(
            tag, opts, lambda n, name: load_tool.run(
                url + "/", "login.lua", n, {"BENCH_USERS": str(users)}, name, server, db_pids
            ),
            lambda: time_bound().bound,
        )  # fmt: skip
        results["e"] = login.probe
        results["e"].rss_peak = login.rss_peak
        if results["e"].errors:
            results["e"].note = f"{results['e'].errors} probe requests failed"

        mixed_chains = chains("BENCH_REFRESH", "bench-mix")
        scenario(
            "f",
            "mixed.lua",
            lambda: {
                "BENCH_TOKENS": str(tokens),
                "BENCH_USERS": str(users),
                "BENCH_MIX": opts.mix,
                **mixed_chains(),
            },
            seconds=opts.mixed_duration,
            retries=0,
        )
        # Logins still in flight when wrk stops finish within a second or two; then read
        # what each worker keeps.
        time.sleep(2.0)
        results["f"].worker_rss_after = [proc_rss(pid) for pid in server.worker_pids()]
        return ConfigResult(db, workers, results, hash_bound, hash_after, login_rounds)


def alternate_login_and_bound(
    tag: str,
    opts: Options,
    logins: Callable[[int, str], Result],
    bound: Callable[[], float],
) -> list[tuple[float, float, float]]:
    """(d) in `opts.login_rounds` short rounds, each a timing of the hash bound and a flood
    of logins (`logins(seconds, name)`), the order swapped every round, so that each pair
    was measured seconds apart: this machine's speed drifts by more than the margin of the
    target within a minute (the hash bound timed 41.7/s in one row group and 51.1/s in the
    next, same code). Each round also keeps the cores the hashing threads used during its
    logins: what the rest of a login's work (event loop, database, kernel, wrk) left them."""
    if opts.login_rounds <= 0:
        return []
    seconds = opts.login_round_seconds
    log(f"[{tag}] {opts.login_rounds} rounds of the hash bound and {seconds}s of logins")
    rounds = []
    for i in range(opts.login_rounds):
        if i % 2 == 0:
            timed = bound()
            flood = logins(seconds, f"{tag}-d-round{i}")
        else:
            flood = logins(seconds, f"{tag}-d-round{i}")
            timed = bound()
        rounds.append((flood.rps, timed, flood.hash_cpu or 0.0))
        ratio = flood.rps / timed if timed else 0.0
        log(
            f"[{tag}] round {i + 1}: {flood.rps:.1f} logins/s, bound {timed:.1f}/s, "
            f"{ratio:.2f} x; hashing threads {flood.hash_cpu or 0.0:.2f} cores"
        )
    return rounds
