"""`python -m conductor_api` and the `conductor-api` command: the command line (`cli.main`),
and one line, not a traceback, for a Ctrl-C that arrives while it is still importing."""

import signal
import sys
from types import FrameType


def _stop_before_serving(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP to `serve` before its supervisor runs (importing, migrating): a stop
    asked for, so the status is 0, as after a stop while serving. Raised where the process
    is; a migration under way rolls back whole."""
    raise SystemExit(0)


def run() -> None:
    """Import the command line and run it."""
    if sys.argv[1:2] == ["serve"]:
        # The supervisor installs its own handlers when it starts.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stop_before_serving)
    try:
        from conductor_api.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("conductor-api: error: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
