#!/usr/bin/env python3
"""Scale benchmark: the load scenarios on an almost empty and on a seeded database (N users,
3N sessions, 10N events), then `conductor-api prune` of the seeded one.

    .venv/bin/python bench/scale.py --users 1000000 --db both --duration 10
    .venv/bin/python bench/scale.py --quick --db sqlite      # smoke run

The code is `conductor_bench/scale.py`; it imports `conductor_api`, so run it with the
server's venv Python. See bench/README.md, "Seeding a large database".
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, not installed: the package sits next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conductor_bench.scale import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
