"""The `conductor-api` command as an operator runs it: real processes, real database file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conductor_api import migrate
from conductor_api.app import create_app
from tests.conftest import PASSWORD, make_settings
from tests.e2e.server import clean_env, cli_path


class Cli:
    """Runs the command with a data directory of the test's own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = clean_env(CONDUCTOR_DATA_DIR=str(data_dir))

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli_path(), *args],
            input=stdin if stdin is not None else "",
            env={**self.env, **(env or {})},
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failure: non-zero, exactly one line on stderr containing each needle, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command on an empty data directory."""
    return Cli(tmp_path / "data")


def _login_in_process(data_dir: Path, password: str = PASSWORD) -> tuple[int, str]:
    """Log alice in through the app on the same database file; (status, access token)."""

    async def go() -> tuple[int, str]:
        settings = make_settings(data_dir, None)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post(
                    "/api/v1/auth/login",
                    json={"username": "alice", "password": password, "device_name": "Pixel"},
                )
                return r.status_code, r.json().get("access_token", "")

    return asyncio.run(go())


class TestUsers:
    def test_create_then_list(self, cli: Cli) -> None:
        created = cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        assert "created user alice" in created.stdout
        listed = cli("users", "list")
        assert listed.returncode == 0
        assert listed.stdout.splitlines() == [
            "alice\tactive\tnot locked\t0 sessions\tno second factor\t0 passkeys"
        ]

    def test_password_is_taken_exactly_as_typed(self, cli: Cli) -> None:
        spaced = "  " + PASSWORD + "  "
        assert (
            cli("users", "create", "alice", "--password-stdin", stdin=spaced + "\n").returncode == 0
        )
        assert _login_in_process(cli.data_dir, PASSWORD)[0] == 401
        assert _login_in_process(cli.data_dir, spaced)[0] == 200

    def test_duplicate_weak_and_missing_passwords_are_one_line(self, cli: Cli) -> None:
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        one_line_error(
            cli("users", "create", "ALICE", "--password-stdin", stdin=PASSWORD + "\n"), "taken"
        )
        one_line_error(
            cli("users", "create", "bob", "--password-stdin", stdin="short\n"), "at least 15"
        )
        one_line_error(cli("users", "create", "bob", "--password-stdin"), "no password")
        one_line_error(cli("users", "create", "carol"), "--password-stdin")
        one_line_error(cli("users", "create", "x", "--password-stdin", stdin=PASSWORD + "\n"))

    def test_disable_revokes_sessions_and_enable_restores_login(self, cli: Cli) -> None:
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert _login_in_process(cli.data_dir)[0] == 200
        assert "1 sessions" in cli("users", "list").stdout
        disabled = cli("users", "disable", "alice")
        assert disabled.returncode == 0
        assert "1 sessions revoked" in disabled.stdout
        assert cli("users", "list").stdout.splitlines() == [
            "alice\tdisabled\tnot locked\t0 sessions\tno second factor\t0 passkeys"
        ]
        assert _login_in_process(cli.data_dir)[0] == 403
        assert cli("users", "enable", "Alice").returncode == 0
        assert _login_in_process(cli.data_dir)[0] == 200

    def test_set_password_revokes_sessions(self, cli: Cli) -> None:
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        _login_in_process(cli.data_dir)
        new = "a completely different passphrase"
        result = cli("users", "set-password", "alice", "--password-stdin", stdin=new + "\n")
        assert result.returncode == 0, result.stderr
        assert "1 sessions revoked" in result.stdout
        assert _login_in_process(cli.data_dir, PASSWORD)[0] == 401
        assert _login_in_process(cli.data_dir, new)[0] == 200

    def test_unknown_user_is_one_line(self, cli: Cli) -> None:
        for command in ("disable", "enable"):
            one_line_error(cli("users", command, "nobody"), "nobody")
        result = cli("users", "set-password", "nobody", "--password-stdin", stdin=PASSWORD + "\n")
        one_line_error(result, "nobody")


class TestSessions:
    def test_list_and_revoke(self, cli: Cli) -> None:
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        _login_in_process(cli.data_dir)
        listed = cli("sessions", "list", "alice")
        assert listed.returncode == 0
        (line,) = listed.stdout.splitlines()
        session_id, state, device = line.split("\t")[:3]
        assert (state, device) == ("active", "Pixel")
        assert (
            cli("sessions", "revoke", session_id).stdout.strip() == f"session {session_id} revoked"
        )
        assert "revoked" in cli("sessions", "list", "alice").stdout.split("\t")[1]
        assert "already revoked" in cli("sessions", "revoke", session_id).stdout

    def test_an_expired_session_is_left_as_it_ended(self, cli: Cli) -> None:
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        _login_in_process(cli.data_dir)
        database = sqlite3.connect(cli.data_dir / "conductor.db")
        with database:
            database.execute("UPDATE sessions SET expires_at = '2000-01-01 00:00:00.000000'")
        (session_id,) = database.execute("SELECT id FROM sessions").fetchone()
        database.close()
        session_id = str(uuid.UUID(session_id))
        assert cli("sessions", "list", "alice").stdout.split("\t")[1] == "expired"
        result = cli("sessions", "revoke", session_id)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"session {session_id} had already expired"
        assert cli("sessions", "list", "alice").stdout.split("\t")[1] == "expired"

    def test_a_stored_device_name_cannot_forge_lines_or_drive_the_terminal(self, cli: Cli) -> None:
        """Names stored before control characters were refused are escaped on output."""
        cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        _login_in_process(cli.data_dir)
        database = sqlite3.connect(cli.data_dir / "conductor.db")
        with database:
            database.execute(
                "UPDATE sessions SET device_name = ?",
                ("Pixel 9\r\n00000000-0000-0000-0000-000000000000\tactive\tfake\x1b[2J\x9b",),
            )
        database.close()
        listed = cli("sessions", "list", "alice")
        assert listed.returncode == 0, listed.stderr
        (line,) = listed.stdout.splitlines()
        fields = line.split("\t")
        assert fields[2] == (
            "Pixel 9\\r\\n00000000-0000-0000-0000-000000000000\\tactive\\tfake\\x1b[2J\\x9b"
        )
        assert fields[-1] == "unbound"
        assert "\x1b" not in listed.stdout and "\r" not in listed.stdout

    def test_bad_ids_are_one_line(self, cli: Cli) -> None:
        malformed = cli("sessions", "revoke", "not-a-uuid")
        one_line_error(malformed, "not a session id")
        assert malformed.returncode == 2  # a usage error, as a bad option
        unknown = cli("sessions", "revoke", "00000000-0000-0000-0000-000000000000")
        one_line_error(unknown, "no session")
        assert unknown.returncode == 1
        one_line_error(cli("sessions", "list", "nobody"), "nobody")


class TestCommand:
    def test_migrate_says_the_revision(self, cli: Cli) -> None:
        result = cli("migrate")
        assert result.returncode == 0
        # The newest migration, read from the scripts: every branch that adds one moves it.
        head = migrate.head_revision(make_settings(cli.data_dir, None))
        assert head is not None and len(head) >= 4
        database = (cli.data_dir / "conductor.db").resolve()
        assert result.stdout.strip() == f"database at revision {head} (head) in {database}"
        assert database.exists()

    def test_a_relative_sqlite_url_is_under_the_working_directory_and_said(
        self, cli: Cli, tmp_path: Path
    ) -> None:
        """sqlite:///name.db is relative (as in SQLAlchemy), sqlite:////path absolute; the
        operator is told which file was opened."""
        absolute = tmp_path / "elsewhere" / "auth.db"
        absolute.parent.mkdir()
        result = cli("migrate", env={"DATABASE_URL": f"sqlite:///{absolute}"})
        assert result.stdout.strip().endswith(f" in {absolute}"), result.stdout
        relative = cli("migrate", env={"DATABASE_URL": "sqlite:///relative.db"})
        where = (cli.data_dir.parent / "relative.db").resolve()
        assert relative.stdout.strip().endswith(f" in {where}"), relative.stdout
        assert where.exists()

    def test_usage_errors_are_one_line(self, cli: Cli) -> None:
        one_line_error(cli("frobnicate"), "frobnicate")
        one_line_error(cli("users", "create"), "username")
        one_line_error(cli("serve", "--workers", "0"), "--workers")
        one_line_error(cli("serve", "--port", "99999"), "--port")

    def test_usage_errors_exit_2(self, cli: Cli) -> None:
        # README and docs/api.md: 2 for usage and settings errors, 1 otherwise.
        for args, needle in (
            (("frobnicate",), "frobnicate"),
            (("users", "create"), "username"),
            (("serve", "--workers", "0"), "--workers"),
            (("serve", "--workers", "10000"), "--workers"),  # one worker a core, at most 64
            (("serve", "--port", "99999"), "--port"),
            (("serve", "--port", "-1"), "--port"),
            (("serve", "--port", "0"), "--port"),
            (("serve", "--port", "9100"), "METRICS_PORT"),
        ):
            result = cli(*args, env={"METRICS_PORT": "9100"})
            one_line_error(result, needle)
            assert result.returncode == 2, (args, result)

    def test_unreachable_database_is_one_line(self, cli: Cli) -> None:
        result = cli("migrate", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"})
        one_line_error(result, "database")

    def test_database_errors_are_one_line(self, cli: Cli, tmp_path: Path) -> None:
        not_sqlite = tmp_path / "notes.db"
        not_sqlite.write_text("not a database, just notes " * 20)
        one_line_error(cli("migrate", env={"DATABASE_URL": f"sqlite:///{not_sqlite}"}), "database")
        missing = "postgresql://postgres@127.0.0.1:5432/conductor_no_such_database"
        one_line_error(cli("migrate", env={"DATABASE_URL": missing}), "database")
        no_host = "postgresql://postgres@no-such-host.invalid/db"
        one_line_error(cli("migrate", env={"DATABASE_URL": no_host}), "database")
        beneath_a_file = "sqlite:////dev/null/conductor.db"
        one_line_error(cli("users", "list", env={"DATABASE_URL": beneath_a_file}), "DATABASE_URL")

    def test_a_database_that_never_answers_fails_within_its_timeout(self, cli: Cli) -> None:
        """DATABASE_TIMEOUT_SECONDS bounds the schema step every command runs first, not
        asyncpg's own 60 s: during an outage, `users disable` says so at once."""
        with socket.socket() as silent:  # connections complete, and nothing is ever said
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            env = {
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/db",
                "DATABASE_TIMEOUT_SECONDS": "1",
            }
            for command in (("migrate",), ("users", "disable", "alice")):
                began = time.monotonic()
                result = cli(*command, env=env)
                elapsed = time.monotonic() - began
                one_line_error(result, "database")
                assert elapsed < 20, (command, elapsed)

    def test_text_that_is_not_utf8_is_one_line(self, cli: Cli) -> None:
        assert cli("migrate").returncode == 0
        for command in (["users", "disable"], ["users", "unlock"], ["sessions", "list"]):
            # An argument in bytes that are not UTF-8 (Python hands it over with surrogates).
            result = subprocess.run(
                [cli_path(), *command, b"al\xffce"],
                env=cli.env, cwd=cli.data_dir.parent, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            one_line_error(result, "UTF-8")
            assert result.returncode == 2, result.stderr  # a usage error
        (cli.data_dir.parent / ".env").write_bytes(b"JWT_ISSUER=caf\xe9\n")
        one_line_error(cli("users", "list"), ".env")

    def test_a_dotenv_line_that_is_no_setting_is_one_line_without_its_text(self, cli: Cli) -> None:
        env_file = cli.data_dir.parent / ".env"
        for text, number in (
            ("# a comment\nsecret value with no name\n", 2),
            ('LOG_LEVEL=info\nJWT_ISSUER="open\n', 2),
            # Blank lines before it count (the parser starts the line after the last one).
            ("LOG_LEVEL=info\n\n \n\r\n\nsecret value with no name\n", 6),
            ("# c\n\nLOG_LEVEL=info\n\n\n\nLOCKOUT MINUTES=5\n", 7),
            # A name alone, the `=value` forgotten: it would be ignored.
            ("LOG_LEVEL=info\nLOCKOUT_MINUTES\n", 2),
            ("A=1\r\nB=2\r\nsecretword\r\n", 3),
        ):
            env_file.write_text(text)
            for command in (("migrate",), ("serve", "--port", "1"), ("openapi",)):
                result = cli(*command)
                one_line_error(result, f".env: line {number} ")
                assert result.returncode == 2, result.stderr
                assert "secret" not in result.stderr and "open" not in result.stderr
        env_file.write_text("# only comments and settings\nLOG_LEVEL=info\n\n")
        assert cli("migrate").returncode == 0

    def test_a_misspelt_dotenv_name_is_one_line_naming_the_setting(self, cli: Cli) -> None:
        """A name a letter or two from a setting's would leave that setting at its default
        without a word (a lockout of 15 minutes where the operator wrote 60): refused, with
        the line and the name it most likely meant. Names of other programs are left alone."""
        env_file = cli.data_dir.parent / ".env"
        for text, line, meant in (
            ("LOG_LEVEL=info\nLOKOUT_MINUTES=60\n", 2, "LOCKOUT_MINUTES"),
            ("\n# c\nmax_failed_login_attempt=3\n", 3, "MAX_FAILED_LOGIN_ATTEMPTS"),
            ("TRUSTED_PROXY=10.0.0.1\n", 1, "TRUSTED_PROXIES"),
        ):
            env_file.write_text(text)
            for command in (("migrate",), ("serve", "--port", "1")):
                result = cli(*command)
                one_line_error(result, f".env: line {line}: ", f"did you mean {meant}?")
                assert result.returncode == 2, result.stderr
                assert "60" not in result.stderr.replace(meant, "")
        env_file.write_text(
            "POSTGRES_PASSWORD=x\nSECRET_KEY=django\nNODE_ENV=production\nlockout_minutes=60\n"
        )
        assert cli("migrate").returncode == 0

    def test_standard_output_closed_is_one_line_not_a_silent_success(self, cli: Cli) -> None:
        """Started with standard output closed (`>&-`), a listing wrote nothing and exited
        0: a script took the empty answer for "no users". Now its first write fails."""
        assert (
            cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode
            == 0
        )
        for command in ("users list", "sessions list alice", "openapi"):
            result = subprocess.run(
                ["sh", "-c", f'exec "$0" {command} >&-', cli_path()],
                env=cli.env, cwd=cli.data_dir.parent, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            one_line_error(result, "standard output is closed")
            assert result.returncode == 1, result.stderr
        # With it open, the same listing works.
        assert "alice" in cli("users", "list").stdout

    def test_a_database_migrated_by_a_newer_release_is_one_line(self, cli: Cli) -> None:
        assert cli("migrate").returncode == 0
        database = sqlite3.connect(cli.data_dir / "conductor.db")
        with database:
            database.execute("UPDATE alembic_version SET version_num = '0099_future'")
        database.close()
        for command in (("migrate",), ("users", "list")):
            result = cli(*command)
            one_line_error(result, "CONDUCTOR_DATA_DIR", "'0099_future'", "newer release")
            assert result.returncode == 2, result.stderr
            assert "unexpected" not in result.stderr

    def test_standard_input_closed_is_one_line_that_says_so(self, cli: Cli) -> None:
        for args, needle in (
            (("--password-stdin",), "standard input (it is closed)"),
            ((), "no terminal"),
        ):
            result = subprocess.run(
                [cli_path(), "users", "create", "bob", *args], stdin=None, env=cli.env,
                cwd=cli.data_dir.parent, capture_output=True, text=True, timeout=60,
                preexec_fn=lambda: os.close(0),
            )  # fmt: skip
            one_line_error(result, needle)
            assert result.returncode == 2, result.stderr  # a usage error
            assert "unexpected" not in result.stderr
        for args, needle in (
            (("--password-stdin",), "no password on standard input"),
            ((), "no terminal"),
        ):
            result = subprocess.run(
                [cli_path(), "users", "create", "bob", *args], stdin=subprocess.DEVNULL,
                env=cli.env, cwd=cli.data_dir.parent, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            one_line_error(result, needle)
            assert result.returncode == 2, result.stderr

    def test_password_stdin_at_a_terminal_is_not_shown(self, cli: Cli) -> None:
        """--password-stdin is for pipes; typed at a terminal, the password is read without
        being echoed (it stayed on the screen and in its scrollback)."""
        import pty

        password = "a passphrase nobody should see 42"
        pid, terminal = pty.fork()
        if pid == 0:  # the child: the terminal is its standard input and output
            os.chdir(cli.data_dir.parent)
            command = [cli_path(), "users", "create", "tom", "--password-stdin"]
            os.execve(command[0], command, cli.env)  # noqa: S606 (the command itself)

        def read(until: bytes) -> bytes:
            got = b""
            deadline = time.monotonic() + 60
            with contextlib.suppress(OSError):  # EIO once the child has gone
                while until not in got and time.monotonic() < deadline:
                    if select.select([terminal], [], [], 1)[0]:
                        if not (chunk := os.read(terminal, 1024)):
                            break
                        got += chunk
            return got

        try:
            # The prompt, which a plain read of a line would not write, then the password.
            shown = read(b"Password")
            os.write(terminal, password.encode() + b"\n")
            shown += read(b"created user")
        finally:
            if b"created user" not in shown:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            os.close(terminal)
        assert os.waitstatus_to_exitcode(status) == 0, shown
        assert b"created user tom" in shown
        assert password.encode() not in shown
        listed = cli("users", "list")
        assert listed.stdout.startswith("tom\t")

    def test_openapi_with_a_bad_setting_is_one_line(self, cli: Cli) -> None:
        one_line_error(cli("openapi", env={"DATABASE_URL": "mysql://root@db/prod"}), "DATABASE_URL")

    def test_a_host_that_is_no_name_is_one_line(self, cli: Cli) -> None:
        for host in ("a" * 64 + ".example", "999.1.1.1", ""):
            result = cli("serve", "--host", host, "--port", "1")
            one_line_error(result, "--host")
            assert result.returncode == 2, result.stderr

    def test_a_group_without_its_command_is_one_line_after_the_help(self, cli: Cli) -> None:
        for args, listed in (((), "migrate"), (("users",), "set-password")):
            result = cli(*args)
            one_line_error(result, "missing command")
            assert result.returncode == 2
            assert listed in result.stdout

    def test_help_exits_zero(self, cli: Cli) -> None:
        result = cli("--help")
        assert result.returncode == 0
        for command in ("serve", "migrate", "users", "sessions", "openapi"):
            assert command in result.stdout


@pytest.mark.parametrize("command", [("keys", "list"), ("users", "list"), ("migrate",)])
def test_a_full_standard_output_is_one_line_and_status_1(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # stdout on a full disk (/dev/full): the write fails, then the interpreter's last flush
    # of what it still held would fail again, printing more and exiting 120.
    data = tmp_path / "data"
    Cli(data)("users", "create", "alice", "--password-stdin", stdin="a long passphrase here\n")
    # As an operator's shell runs it: standard output buffered (the tests' may not be).
    env = clean_env(CONDUCTOR_DATA_DIR=str(data))
    buffered = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [cli_path(), *command],
            env=buffered,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.stderr.splitlines() == [
        "conductor-api: error: [Errno 28] No space left on device"
    ]
    assert result.returncode == 1
