"""A real nginx for tests, on loopback with its own prefix, running deploy/'s site config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.e2e.server import _die_with_parent, free_port
from tests.e2e.tools import DEPLOY, render, tool

SITE = DEPLOY / "nginx-conductor-api.conf"
# Only what the site file needs around it: no daemon, every path inside the prefix.
MAIN = """\
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
    # Bodies stay in memory: run as root, nginx's workers are `nobody`, who cannot write
    # into the test's private temporary directory.
    client_body_buffer_size 1m;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    include $prefix/conductor-api.conf;
}
"""


def site_config(listen: str, upstream: str) -> str:
    """deploy/'s site file with the test's addresses: its HTTP `listen` lines become one
    loopback port, the upstream becomes the test server; nothing else changes."""
    text = SITE.read_text()
    text, listens = re.subn(r"(?m)^    listen 80;$", f"    listen {listen};", text)
    text, ipv6 = re.subn(r"(?m)^    listen \[::\]:80;\n", "", text)
    text, servers = re.subn(r"(?m)^    server 127\.0\.0\.1:8000;$", f"    server {upstream};", text)
    assert (listens, ipv6, servers) == (1, 1, 1), "deploy/nginx-conductor-api.conf changed shape"
    return text


class Nginx:
    """nginx in the foreground as a child of the test, stopped (SIGQUIT) at exit."""

    def __init__(self, prefix: Path, upstream_port: int) -> None:
        self.binary = tool("nginx")
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (prefix / "conductor-api.conf").write_text(
            site_config(f"127.0.0.1:{self.port}", f"127.0.0.1:{upstream_port}")
        )
        (prefix / "nginx.conf").write_text(render(MAIN, prefix=str(prefix)))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        command = [self.binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        command += ["-e", str(self.prefix / "error.log")]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}{self.error_log()}")
            try:
                httpx.get(self.url + "/health/live", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"nginx did not start: {self.error_log()}")

    def error_log(self) -> str:
        """What nginx logged."""
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __exit__(self, *_: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
