"""A real nginx for tests, on loopback with its own prefix, running deploy/'s site config."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def site_config(listen: str, upstream: str, tls: tuple[str, Path] | None = None) -> str:
    """deploy/'s site file with the test's addresses: its HTTP `listen` lines become one
    loopback port, the upstream becomes the test server; nothing else changes. With `tls`
    (an address and a directory holding cert.pem and key.pem), its TLS lines are also
    uncommented, as an operator does, listening there with that certificate."""
    text = SITE.read_text()
    text, listens = re.subn(r"(?m)^    listen 80;$", f"    listen {listen};", text)
    text, ipv6 = re.subn(r"(?m)^    listen \[::\]:80;\n", "", text)
    text, servers = re.subn(r"(?m)^    server 127\.0\.0\.1:8000;$", f"    server {upstream};", text)
    assert (listens, ipv6, servers) == (1, 1, 1), "deploy/nginx-conductor-api.conf changed shape"
    if tls is not None:
        address, certs = tls
        tls_lines = {
            "    # listen 443 ssl http2;": f"    listen {address} ssl http2;",
            "    # listen [::]:443 ssl http2;": "",
            "    # ssl_certificate     /etc/letsencrypt/live/api.example.com/fullchain.pem;":
                f"    ssl_certificate {certs / 'cert.pem'};",
            "    # ssl_certificate_key /etc/letsencrypt/live/api.example.com/privkey.pem;":
                f"    ssl_certificate_key {certs / 'key.pem'};",
            "    # ssl_protocols       TLSv1.2 TLSv1.3;": "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    # ssl_session_cache   shared:conductor_tls:10m;":
                "    ssl_session_cache shared:conductor_tls:10m;",
        }  # fmt: skip
        for commented, line in tls_lines.items():
            assert f"\n{commented}\n" in text, f"deploy/'s TLS lines changed: {commented}"
            text = text.replace(f"\n{commented}\n", f"\n{line}\n")
    return text


def self_signed(directory: Path) -> Path:
    """A certificate for 127.0.0.1 and its key, as cert.pem and key.pem in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory


class Nginx:
    """nginx in the foreground as a child of the test, stopped (SIGQUIT) at exit."""

    def __init__(self, prefix: Path, upstream_port: int, *, tls: bool = False) -> None:
        self.binary = tool("nginx")
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # With `tls`, deploy/'s TLS lines on a port of their own (and a self-signed
        # certificate), beside the plain HTTP port.
        self.tls_url = ""
        self.tls_context: ssl.SSLContext | None = None  # trusts that certificate
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        with_tls = None
        if tls:
            tls_port = free_port()
            self.tls_url = f"https://127.0.0.1:{tls_port}"
            with_tls = (f"127.0.0.1:{tls_port}", self_signed(prefix / "tls"))
            self.tls_context = ssl.create_default_context(cafile=prefix / "tls" / "cert.pem")
        (prefix / "conductor-api.conf").write_text(
            site_config(f"127.0.0.1:{self.port}", f"127.0.0.1:{upstream_port}", with_tls)
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
