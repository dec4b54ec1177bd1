"""Retention: what expires, and the pruner that deletes it in small batches.

Nothing the server keeps may grow with its history, or a server that has run for a year (or
been sprayed with random usernames) is slower than a fresh one. Everything that expires is
one line of `RULES` in `rules.py`: a table and the condition under which a row of it is
past keeping, given the time now and the retention settings. The pruner knows nothing else.

To add a new expiring thing (login challenges, DPoP proof `jti`s, `mfa_token`s, device
tokens, ...): add one `Expiring(table, condition)` line to `RULES`, and make sure an index
serves the condition (a migration, and a line in `tests/retention/test_query_plans.py`),
since the delete runs as `DELETE ... WHERE pk IN (SELECT pk ... WHERE condition LIMIT n)`.

How it runs: `serve` prunes every `PRUNE_INTERVAL_SECONDS` in each worker (`task.py`), and
`conductor-api prune` does it once on demand. Each statement deletes at most
`PRUNE_BATCH_SIZE` rows in a transaction of its own, so a SQLite writer is never held up by
more than one batch. Only one pruner works on a database at a time: a PostgreSQL advisory
lock, or on SQLite a file lock beside the database; a pruner that finds the lock taken
skips the round.
"""
