"""Load benchmark of real `conductor-api serve` processes, driven by wrk on loopback.

For each database (SQLite, PostgreSQL) and worker count, this starts a server of its own on a
free 127.0.0.1 port with a fresh data directory (and a fresh PostgreSQL database), seeds users
through the registration endpoint, and measures:

  a. GET /health/live                      the ceiling of this server
  b. GET /api/v1/auth/me                   a pool of access tokens, round-robin
  c. POST /api/v1/auth/refresh             every request on its own live refresh-token chain
  d. POST /api/v1/auth/login               right password, one user per connection or more;
                                           against the Argon2id hash bound of this machine
  e. GET /health/live at a low steady rate while (d) floods the same server
  f. mixed load, then the RSS of each worker
  s. GET /api/v1/auth/me on a 1-worker and a 2-worker server side by side, alternating

It prints a Markdown table (and writes it with --out). Targets that are not met are reported,
not treated as failures; anything that stops a measurement exits non-zero with one line.
Load goes to 127.0.0.1 only. See bench/README.md.

Read it one module at a time, in this order:

  common.py      paths, targets, scenario names, BenchError, log
  system.py      /proc: memory and CPU of processes and of the machine; the Sampler
  servers.py     a `conductor-api serve` process group; a PostgreSQL database of its own
  seed.py        users and token pools, made through the API
  load.py        wrk and its Lua scenarios (bench/lua/) -> Result; the latency Probe
  hashbound.py   Argon2id verifies per second with the server's own parameters
  scenarios.py   one configuration (database, workers): scenarios (a) to (f)
  scaling.py     (s): one worker against two, in alternating rounds
  report.py      the Markdown report, and RESULTS.md's hand-written part
  cli.py         flags, every configuration, the report; `bench/run.py` calls its main()

Beside it, the scale benchmark (`bench/scale.py`, README "Seeding a large database"):

  seeder.py      N users, 3N sessions, 10N events, written straight into a database
  scale.py       an almost empty and a seeded database per kind: scenarios (a)-(d) and
                 (g) GET /auth/sessions, (h) GET /auth/events as the 1,000-event user; then
                 `conductor-api prune` against what the retention rules keep; its report
"""
