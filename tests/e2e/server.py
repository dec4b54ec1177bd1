"""Real `conductor-api serve` processes for end-to-end tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL or a timeout,
    so that an interrupted run leaves no server behind (Linux's PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_path() -> str:
    """The installed `conductor-api` next to the running interpreter."""
    candidate = Path(sys.executable).parent / "conductor-api"
    return (
        str(candidate) if candidate.exists() else shutil.which("conductor-api") or "conductor-api"
    )


PREFIXES = ("JWT_", "ANDROID_API_", "CONDUCTOR_", "DATABASE_", "CORS_", "METRICS_", "KEY_")


def clean_env(**env: str) -> dict[str, str]:
    """The current environment without any Conductor setting, plus `env`."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(PREFIXES)
        and k
        not in ("ALLOW_REGISTRATION", "MAX_REGISTRATIONS_PER_IP", "TRUSTED_PROXIES", "LOG_FORMAT")
    }
    return {**keep, **env}


class Server:
    """A `conductor-api serve` child process on a free port; a context manager."""

    def __init__(
        self, cwd: Path, env: dict[str, str] | None = None, workers: int = 1, port: int = 0
    ) -> None:
        self.cwd = cwd
        self.env = clean_env(**(env or {}))
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        """Start and wait until /health/ready answers 200."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s: {self.log()}")

    def launch(self) -> None:
        """Start the process and return at once."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [cli_path(), "serve", "--port", str(self.port), "--workers", str(self.workers)],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group (the crash-safety tests use this)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def create_user(cwd: Path, env: dict[str, str], username: str, password: str) -> None:
    """`conductor-api users create USERNAME --password-stdin`, as an operator runs it."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [cli_path(), "users", "create", username, "--password-stdin"],
        input=password + "\n",
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"created user {username}" in result.stdout
