#!/usr/bin/env python3
"""Load benchmark of real `conductor-api serve` processes, driven by wrk on loopback.

The code is the `conductor_bench` package beside this file (its __init__ says what each
module does); this is its entry point: `python bench/run.py --help`, or `make bench`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, not installed: the package sits next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conductor_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
