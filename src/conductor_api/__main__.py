"""`python -m conductor_api` and the `conductor-api` command: the command line (`cli.main`),
and one line, not a traceback, for a Ctrl-C that arrives while it is still importing."""

import sys


def run() -> None:
    """Import the command line and run it."""
    try:
        from conductor_api.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("conductor-api: error: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
