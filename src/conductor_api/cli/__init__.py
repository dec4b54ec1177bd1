"""The `conductor-api` command: every error is one line on stderr and a non-zero status."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, ValidationError
from sqlalchemy import exc as sa_exc
from typer.exceptions import TyperException

from conductor_api import migrate as migrations
from conductor_api.cli import keys, passkeys, prune, sessions, users
from conductor_api.cli.common import CliError, UsageError, check_stored_secrets, settings
from conductor_api.config import (
    ConfigError,
    Settings,
    check_env_file,
    config_error,
    listen_host,
)
from conductor_api.errors import AppError
from conductor_api.logs import SECURITY

app = typer.Typer(
    help="Conductor API: the authentication backend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(users.app, name="users")
app.add_typer(sessions.app, name="sessions")
app.add_typer(passkeys.app, name="passkeys")
app.command()(prune.prune)
app.add_typer(keys.app, name="keys")


# Each worker holds about 100 MiB and a database pool; more than this is a typo, not a
# machine (one worker a core serves best).
MAX_WORKERS = 64


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [ANDROID_API_HOST].")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port [ANDROID_API_PORT].")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=MAX_WORKERS, help="Worker processes (one per core).")
    ] = 1,
) -> None:
    """Bring the schema up to date, then serve."""
    if host is not None:
        try:
            host = listen_host(host)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--host") from None
    s = settings()  # also creates the generated secrets before any worker starts
    api_port = port or s.android_api_port
    if s.metrics_port is not None and s.metrics_port == api_port:
        raise ConfigError("METRICS_PORT: must differ from the API's port (--port)")
    # Migrates too; a wrong KEY_ENCRYPTION_KEY stops here, in one line. Also in the HS* modes,
    # which sign without the key set: a set stored there must open when the mode changes back.
    keys.prepare()
    changed = check_stored_secrets()  # a wrong KEY_ENCRYPTION_KEY stops here
    from conductor_api.logs import configure_logging
    from conductor_api.serving.supervisor import ListenError, ServeError, Supervisor, log

    configure_logging(s.log_format, s.log_level)
    if changed:
        log.warning(
            "%s: not what the last start on this database had; instances that share a "
            "database need the same values (with others they refuse each other's tokens, "
            "nonces or proofs), so set them alike on every instance (after changing them on "
            "purpose, this is said once)",
            ", ".join(changed),
        )
    try:
        status = Supervisor(s, host or s.android_api_host, api_port, workers).run()
    except ListenError as e:
        # Named as the operator gave it: the option, or else the setting.
        if e.host_fault:
            name = "--host" if host is not None else "ANDROID_API_HOST"
        else:
            name = "--port" if port is not None else "ANDROID_API_PORT"
        raise CliError(f"{name}: {e}") from None
    except ServeError as e:
        raise CliError(str(e)) from None
    if status:
        raise CliError("the server stopped: see the log above")


@app.command()
def migrate() -> None:
    """Bring the schema up to date and say which revision it is at."""
    s = settings()
    migrations.upgrade(s)
    where = f" in {Path(s.sqlite_path).resolve()}" if s.is_sqlite else ""
    typer.echo(f"database at revision {migrations.current_revision(s)} (head){where}")


@app.command()
def openapi() -> None:
    """Print the OpenAPI document."""
    from conductor_api.app import create_app

    # Placeholder keys: printing the document must not create secrets or touch a database.
    check_env_file()  # its settings are read too: a broken line is refused as everywhere
    try:
        placeholder = Settings(
            jwt_algorithm="HS256",  # no key set is read either
            jwt_secret_key=SecretStr(secrets.token_urlsafe(32)),
            jwt_refresh_secret_key=SecretStr(secrets.token_urlsafe(32)),
        )
    except ValidationError as e:
        raise config_error(e) from None
    typer.echo(json.dumps(create_app(placeholder).openapi(), indent=2))


def _fail(message: str, status: int = 1) -> None:
    print(f"conductor-api: error: {message}", file=sys.stderr)
    _quiet_stdout()
    sys.exit(status)


def _quiet_stdout() -> None:
    """Send what standard output still holds nowhere: when it is what failed (a full disk,
    a closed pipe), the interpreter's last flush would fail again and print more lines and
    exit 120, after the one line of the error."""
    try:
        sys.stdout.flush()
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def _first_line(error: BaseException) -> str:
    """What an error says, in one line: a driver's own message rather than SQLAlchemy's
    (which adds the statement and a link)."""
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig else error
    lines = str(cause).strip().splitlines()
    # asyncpg's errors behind SQLAlchemy's read "<class '...'>: message".
    return (lines[0] if lines else type(cause).__name__).split(">: ", 1)[-1]


def _not_text(error: UnicodeError) -> str:
    text = getattr(error, "object", None)
    return f"not valid UTF-8 text: {text!r}" if isinstance(text, str) else "not valid UTF-8 text"


class _ClosedStdout(io.TextIOBase):
    """Standard output when the process was started with it closed (`>&-`): Python leaves
    `sys.stdout` None, where click's echo writes nothing and a listing would exit 0 having
    listed nothing. Here the first write fails, as it would on a closed pipe."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass


def main() -> None:
    """Run the command line; never show a traceback."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    # A command's security events (`users reset-mfa`: mfa_disabled) are in the database;
    # without this, logging's last resort would print them on standard error, which is
    # for errors. `serve` configures real handlers, which still get them.
    SECURITY.addHandler(logging.NullHandler())
    command = typer.main.get_command(app)
    try:
        result = command.main(prog_name="conductor-api", standalone_mode=False)
    except typer.Abort:
        _fail("aborted")
    except TyperException as e:
        context = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and context is not None:
            # A group without its command: the help on stdout, what is wrong in one line.
            typer.echo(context.get_help())
            _fail("missing command (the commands are listed above)", e.exit_code)
        _fail(e.format_message().replace("\n", " "), e.exit_code)
    except (ConfigError, UsageError) as e:
        _fail(str(e), 2)
    except (CliError, AppError) as e:
        _fail(str(e))
    except (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    ) as e:
        # Unreachable, silent, busy, or unusable (a read-only file): the driver says which.
        _fail(f"the database could not be used ({type(e).__name__}: {_first_line(e)})")
    except sa_exc.DBAPIError as e:
        # It answered, and refused: no such database or role, a file that is not SQLite.
        _fail(f"the database refused: {_first_line(e)}")
    except UnicodeError as e:
        # An argument that is not text (the .env's own bytes are checked as settings).
        _fail(_not_text(e), 2)
    except OSError as e:
        _fail(_first_line(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:
        # The contract's last word: one line, never a traceback, even for a bug.
        _fail(f"unexpected error ({type(e).__name__}): {_first_line(e)}")
    sys.exit(result if isinstance(result, int) else 0)
