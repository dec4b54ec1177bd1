"""The Markdown report: tables, targets met or not, and RESULTS.md's hand-written part."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from conductor_bench.common import (
    BUSY_CORES,
    MIB,
    SCENARIOS,
    TARGET_LOGIN_OF_BOUND,
    TARGET_ME_RATIO,
    TARGET_PROBE_P99_MS,
    TARGET_REFRESH_RATIO,
    TARGET_SCALING,
    TARGET_WORKER_RSS_MIB,
    log,
)
from conductor_bench.load import Result, uneven
from conductor_bench.scaling import Scaling
from conductor_bench.scenarios import ConfigResult, Options

# Hash timings before and after (d) further apart than this are noted under the table.
HASH_DRIFT_NOTED = 0.15


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_errors(r: Result) -> str:
    if not r.errors:
        return "0"
    total = r.requests or 1
    return f"{r.errors} ({100 * r.errors / total:.1f}%)"


def fmt_cpu(r: Result) -> str:
    if r.server_cpu is None:
        return ""
    parts = (r.db_cpu if r.db_cpu else None, r.loadgen_cpu, r.other_cpu)
    server = f"{r.server_cpu:.2f}"
    if len(r.worker_cpu) > 1:
        server += " (" + "+".join(f"{x:.2f}" for x in r.worker_cpu) + ")"
    return "/".join([server] + ["-" if x is None else f"{x:.2f}" for x in parts])


def fmt_cost(r: Result) -> str:
    """Server and database CPU time per request, in ms."""
    if r.server_cpu is None or not r.rps:
        return ""
    return f"{1000 * (r.server_cpu + (r.db_cpu or 0)) / r.rps:.2f}"


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def scaling_table(scalings: list[Scaling], by: dict[tuple[str, int], ConfigResult]) -> list[str]:
    """(s): each round's pair of figures, and (for comparison) the (b) rows' quotient."""
    lines = [
        "",
        "## s. /auth/me, 1 worker against 2, alternating",
        "",
        "Both servers up side by side on one database; wrk alternates between them "
        f"({scalings[0].seconds} s each, the order swapped every round), so each pair was "
        "measured seconds apart. The ratio is the median round's. The quotient of the (b) "
        "rows above, measured minutes apart, is given beside it: the machine's speed drifts "
        "between those. The ceiling is the CPU the two workers had over the CPU the one "
        "worker had: the ratio the round would reach if a request cost each worker the same "
        "CPU on both servers. What the two workers did not get went to wrk and the database, "
        "which share the same cores, so the ceiling is below 2 on a machine of 2 cores.",
        "",
        "| db | round | 1 worker req/s | 2 workers req/s | ratio "
        "| CPU srv/db/wrk/other (2 workers) | ceiling |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for sc in scalings:
        rounds = zip(sc.one, sc.two, sc.ratios, sc.ceilings, strict=True)
        for i, (one, two, ratio, ceiling) in enumerate(rounds):
            lines.append(
                f"| {sc.db} | {i + 1} | {fmt_rate(one.rps)} | {fmt_rate(two.rps)} "
                f"| {ratio:.2f} | {fmt_cpu(two)} | {ceiling_text(ceiling)} |"
            )
        b = ""
        if (sc.db, 1) in by and (sc.db, 2) in by:
            one_b, two_b = by[(sc.db, 1)].results["b"].rps, by[(sc.db, 2)].results["b"].rps
            b = f"; (b) rows: {two_b / one_b:.2f}" if one_b else ""
        lines.append(
            f"| {sc.db} | median | | | **{sc.ratio:.2f}** | {b.lstrip('; ')} "
            f"| {ceiling_text(sc.ceiling)} |"
        )
    return lines


def ceiling_text(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def login_rounds_table(configs: list[ConfigResult]) -> list[str]:
    """(d'): each round's logins and the hash bound timed beside them."""
    with_rounds = [cfg for cfg in configs if cfg.login_rounds]
    if not with_rounds:
        return []
    lines = [
        "",
        "## d'. Login against the hash bound, alternating",
        "",
        "After (d), each row group times the hash bound and floods logins in short rounds, "
        "the order swapped every round, so that each pair was measured seconds apart. "
        "(d)'s target is the median round's ratio; (d)'s own row, a run of its own against "
        "timings before and after it, is given beside it. Hashing is the CPU the workers' "
        "hashing threads (`pwhash`) used during the round's logins, in cores; over the cores "
        "the bound hashes on, it is the ratio the round would reach if each verify cost what "
        "it costs alone (the ceiling): the rest of the CPU went to the rest of each login "
        "(event loop, database, kernel) and to wrk.",
        "",
        "| db | workers | round | logins/s | hash bound/s | ratio | hashing, cores | ceiling |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cfg in with_rounds:
        hashing_on = cfg.hash.cores or 1
        for i, ((login, bound, hashing), ratio) in enumerate(
            zip(cfg.login_rounds, cfg.login_ratios, strict=True)
        ):
            lines.append(
                f"| {cfg.db} | {cfg.workers} | {i + 1} | {login:.1f} | {bound:.1f} | {ratio:.2f} "
                f"| {hashing:.2f} | {hashing / hashing_on:.2f} |"
            )
        ceiling = statistics.median(h for _, _, h in cfg.login_rounds) / hashing_on
        lines.append(
            f"| {cfg.db} | {cfg.workers} | median | | | **{cfg.login_ratio:.2f}** "
            f"((d) row: {cfg.login_row_ratio:.2f}) | | {ceiling:.2f} |"
        )
    return lines


def report(
    configs: list[ConfigResult],
    scalings: list[Scaling],
    header: dict[str, str],
    opts: Options,
) -> tuple[str, list[tuple[str, str, bool]]]:
    lines = ["# Conductor API load benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "req/s counts successful responses only; p50 and p99 (of all responses) are "
        "wrk's (a-d, f) or the probe's own (e, timed from each request's scheduled send). "
        "Errors are HTTP statuses >= 400 plus socket errors and timeouts. RSS is the peak, "
        "during the scenario, of the summed resident memory of the worker processes; for (f) "
        "the target column gives each worker's RSS 2 s after the load stopped, and its peak "
        "during the load. CPU is cores busy on average during the scenario, as "
        "server/db/wrk/other: the server's workers (each worker's share in brackets), the "
        "PostgreSQL backends of the run's "
        "database, wrk (the load generator shares the same cores), and every other process "
        "on the machine (this script and its probe left out); CPU ms/req is (server + db) "
        "CPU time per request. Where other is well above 0, "
        "someone else's work was taking CPU from the server and the figures are low.",
        "",
        "| db | workers | scenario | req/s | vs (a) | p50 ms | p99 ms | errors | RSS MiB "
        "| CPU srv/db/wrk/other | CPU ms/req | target | |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    checks: list[tuple[str, str, bool]] = []
    notes: list[str] = []
    for cfg in configs:
        a = cfg.results["a"].rps
        for key in "abcdef":
            r = cfg.results.get(key)
            if r is None:
                continue
            ratio = f"{r.rps / a:.2f}" if a and key != "e" else ""
            target, ok = "", None
            label = f"{cfg.db} w{cfg.workers} {key}"
            if key == "b":
                ok = r.rps >= TARGET_ME_RATIO * a
                target = f"≥ {TARGET_ME_RATIO} x (a)"
                checks.append((f"{label}: /auth/me ≥ {TARGET_ME_RATIO} x (a)", ratio, ok))
            elif key == "c":
                ok = r.rps >= TARGET_REFRESH_RATIO * a
                target = f"≥ {TARGET_REFRESH_RATIO} x (a)"
                checks.append((f"{label}: /auth/refresh ≥ {TARGET_REFRESH_RATIO} x (a)", ratio, ok))
            elif key == "d":
                share = cfg.login_ratio
                ok = share >= TARGET_LOGIN_OF_BOUND
                median = (
                    f"median of {len(cfg.login_rounds)} rounds (d'): " if cfg.login_rounds else ""
                )
                disturbed = [h for h in (cfg.hash, cfg.hash_after) if h and h.disturbed]
                how = ", from CPU time" if disturbed else ""
                timings = (
                    f"mean of {cfg.hash.bound:.1f} before and {cfg.hash_after.bound:.1f} after, "
                    if cfg.hash_after is not None
                    else ""
                )
                target = (
                    f"≥ {TARGET_LOGIN_OF_BOUND} x hash bound {cfg.hash_bound:.1f}/s "
                    f"({timings}{cfg.hash.pool} hashing threads{how}): "
                    f"{cfg.login_row_ratio:.2f}; {median}{share:.2f}"
                )
                checks.append(
                    (f"{label}: login ≥ {TARGET_LOGIN_OF_BOUND} x hash bound", f"{share:.2f}", ok)
                )
                for h in disturbed:
                    notes.append(
                        f"{cfg.db} w{cfg.workers} hash bound: {h.rate:.1f} verifies/s "
                        f"timed, {h.cpu_rate:.1f}/s from the CPU time: other processes "
                        "disturbed the timing, so the bound uses the CPU time"
                    )
                if cfg.hash_drift > HASH_DRIFT_NOTED:
                    notes.append(
                        f"{cfg.db} w{cfg.workers} hash bound: the timings before and after (d) "
                        f"differ by {cfg.hash_drift:.0%}: the machine's speed changed, and "
                        "(d)'s ratio is uncertain by about as much"
                    )
            elif key == "e":
                ok = r.p99_ms <= TARGET_PROBE_P99_MS
                target = f"p99 ≤ {TARGET_PROBE_P99_MS:.0f} ms"
                checks.append(
                    (f"{label}: /health/live p99 under login flood", f"{r.p99_ms:.1f} ms", ok)
                )
            elif key == "f":
                worst = max(r.worker_rss_after, default=0) / MIB
                ok = worst <= TARGET_WORKER_RSS_MIB
                after = ", ".join(f"{x / MIB:.1f}" for x in r.worker_rss_after)
                peak = ", ".join(f"{x / MIB:.1f}" for x in r.worker_rss)
                target = (
                    f"each worker ≤ {TARGET_WORKER_RSS_MIB:.0f} MiB after the load: {after} "
                    f"(peak during it: {peak})"
                )
                checks.append((f"{label}: RSS per worker after mixed load", f"{worst:.1f} MiB", ok))
            name = SCENARIOS[key]
            if key == "f":
                name += f", {opts.mixed_duration} s"
            lines.append(
                f"| {cfg.db} | {cfg.workers} | {name} | {fmt_rate(r.rps)} | {ratio} "
                f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {fmt_errors(r)} | {r.rss_peak / MIB:.1f} "
                f"| {fmt_cpu(r)} | {fmt_cost(r)} | {target} | {'' if ok is None else mark(ok)} |"
            )
            if r.note:
                notes.append(f"{cfg.db} w{cfg.workers} {key}: {r.note}")
            if any(not k.startswith("2") for k in r.statuses):
                notes.append(f"{cfg.db} w{cfg.workers} {key}: statuses {r.statuses}")
    by = {(c.db, c.workers): c for c in configs}
    lines += login_rounds_table(configs)
    if scalings:
        lines += scaling_table(scalings, by)
    for sc in scalings:
        checks.append(
            (
                f"{sc.db} s: /auth/me with 2 workers ≥ {TARGET_SCALING} x 1 worker "
                "(median of alternating rounds)",
                f"{sc.ratio:.2f}",
                sc.ratio >= TARGET_SCALING,
            )
        )
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {mark(ok)} |" for name, value, ok in checks]
    met = sum(ok for _, _, ok in checks)
    lines += ["", f"{met} of {len(checks)} targets met."]
    busy = [
        f"{c.db} w{c.workers} {k}"
        for c in configs
        for k, r in c.results.items()
        if r.other_cpu is not None and r.other_cpu > BUSY_CORES
    ]
    if busy:
        lines += [
            "",
            f"Warning: other processes used more than {BUSY_CORES} cores on average during "
            f"{len(busy)} scenario(s) ({', '.join(busy)}); those figures understate the server.",
        ]
    lopsided = [
        f"{c.db} w{c.workers} {k}" for c in configs for k, r in c.results.items() if uneven(r)
    ]
    if lopsided:
        lines += [
            "",
            f"Warning: one worker did nearly all the work in {len(lopsided)} scenario(s) "
            f"({', '.join(lopsided)}): the kernel handed it most of wrk's connections, so "
            "those figures show one worker, not the server.",
        ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n", checks


HAND_WRITTEN = "<!-- Hand-written notes below this line are kept when run.py rewrites the file. -->"


def write_report(path: Path, text: str) -> None:
    """Write the report to `path`, keeping whatever an earlier version of the file had below
    the HAND_WRITTEN marker (analysis written by people), after the new report."""
    kept = ""
    with contextlib.suppress(OSError):
        old = path.read_text()
        if HAND_WRITTEN in old:
            kept = old.split(HAND_WRITTEN, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + HAND_WRITTEN + (kept or "\n"))
    log(f"wrote {path}")
    if kept.strip():
        log(f"kept the hand-written part of {path}: check that it still fits the new figures")


def keep_note(workdir: Path) -> str:
    """Where the logs of a failed run are, if it got far enough to write any."""
    return f" (logs kept in {workdir})" if any(workdir.iterdir()) else ""
