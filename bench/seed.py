#!/usr/bin/env python3
"""Fill a database for the scale benchmark: N users, 3N sessions, 10N events (see
conductor_bench/seeder.py for the shape). Run it with the server's venv Python:

    .venv/bin/python bench/seed.py --users 1000000 --database-url postgresql://postgres@127.0.0.1/big
    .venv/bin/python bench/seed.py --users 1000000 --database-url sqlite:////tmp/big/conductor.db

It brings the schema up to date first (the server's migrations), then adds rows to what is
there; give it an empty database. Prints what it wrote, how long it took, and the size.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conductor_bench.seeder import (
    SEED_PASSWORD,
    Shape,
    database_bytes,
    seed,
    username,
)


def main(argv: list[str]) -> int:
    """Parse flags, migrate, seed, report."""
    p = argparse.ArgumentParser(prog="bench/seed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, required=True, help="N: users (3N sessions, 10N events)")
    p.add_argument("--database-url", required=True, help="sqlite:///path or postgresql://...")
    p.add_argument("--heavy-events", type=int, default=1000, help="extra events of user 0")
    p.add_argument("--chunk", type=int, default=20_000, help="users per COPY/executemany batch")
    args = p.parse_args(argv)
    if args.users < 1 or args.chunk < 1 or args.heavy_events < 0:
        p.error("--users and --chunk must be at least 1, --heavy-events at least 0")

    from conductor_api import migrate
    from conductor_api.config import ConfigError, Settings
    from conductor_api.security.passwords import make_password_hash

    try:
        settings = Settings(_env_file=None, database_url=args.database_url)  # type: ignore[call-arg]
    except Exception as e:  # a bad URL: one line, like the server
        print(f"seed: error: --database-url: {e.__class__.__name__}", file=sys.stderr)
        return 2
    try:
        migrate.upgrade(settings)
    except (ConfigError, OSError) as e:
        print(f"seed: error: {e}", file=sys.stderr)
        return 1
    url = settings.sqlalchemy_url.replace("+aiosqlite", "")
    shape = Shape(
        users=args.users,
        now=datetime.now(UTC),
        password_hash=make_password_hash().hash(SEED_PASSWORD),
        heavy_events=args.heavy_events,
        chunk=args.chunk,
    )
    started = time.monotonic()
    seed(url, shape)
    elapsed = time.monotonic() - started
    n = args.users
    print(
        f"seeded {n:,} users, {3 * n:,} sessions, {10 * n + args.heavy_events:,} events "
        f"in {elapsed:.1f} s; database {database_bytes(url) / 2**20:,.1f} MiB; "
        f"user {username(0)} has {10 + args.heavy_events} events; password {SEED_PASSWORD!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
