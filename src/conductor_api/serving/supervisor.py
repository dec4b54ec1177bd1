"""Runs N worker processes, each on its own SO_REUSEPORT socket, plus the metrics listener.

One shared socket let one worker take nearly every connection now and then (whichever
accept() won); with a socket per worker the kernel spreads connections by their addresses.
The supervisor binds every socket itself, so a busy port is one line before any worker
starts, and a restarted worker takes over its predecessor's socket."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from conductor_api.config import Settings, hash_threads_per_worker
from conductor_api.serving import STARTUP_FAILURE

if TYPE_CHECKING:
    from conductor_api.metrics.exposition import MetricsListener

log = logging.getLogger("conductor_api")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Time for workers to finish their requests after SIGTERM before they are killed.
GRACEFUL_SECONDS = 20.0
# More unexpected exits than this within the window: something is wrong, stop.
MAX_RESTARTS, RESTART_WINDOW = 5, 60.0


METRICS_DIR_PREFIX = "conductor-metrics-"


def _remove_orphaned_metrics_dirs() -> None:
    """The metrics directories of earlier runs of this user that were killed (SIGKILL, a
    power cut) before they could remove their own: their process no longer exists."""
    for path in Path(tempfile.gettempdir()).glob(METRICS_DIR_PREFIX + "*-*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or path.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # gone already, or a live process of another user


class ServeError(Exception):
    """The server cannot start; one line for the operator."""


class ListenError(ServeError):
    """An address that cannot be listened on (the API's, or the metrics'); `host_fault` when
    the host is to blame (a name that does not resolve, an address not of this machine),
    else the port (in use, or below 1024), so that the operator is told which option or
    setting to change."""

    def __init__(self, message: str, *, host_fault: bool) -> None:
        super().__init__(message)
        self.host_fault = host_fault


def _listen_error(host: str, port: int, e: OSError) -> ListenError:
    """A name that does not resolve, or an address not of this machine, is the host's
    fault; anything else (a port in use, or one below 1024) the port's."""
    host_fault = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
    return ListenError(f"cannot listen on {host}:{port}: {e.strerror}", host_fault=host_fault)


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise _listen_error(host, port, e) from None
    except UnicodeError:
        # IDNA refuses a label over 63 characters, or bytes that are not UTF-8.
        raise ListenError(
            f"cannot listen on {host!r}: not a valid host name", host_fault=True
        ) from None


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on host:port in one SO_REUSEPORT group."""
    family = _family(host, port)
    # SO_REUSEPORT would let these join a group another server of the same user already
    # listens in, and silently share its traffic: check first that the port is free.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise _listen_error(host, port, e) from None
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as e:
            sock.close()
            for s in sockets:
                s.close()
            raise _listen_error(host, port, e) from None
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


class Supervisor:
    """Starts, watches and stops the workers; cleans the metrics directory it made."""

    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        # Also with metrics off now: a run killed with them on left its directory behind.
        _remove_orphaned_metrics_dirs()
        self.settings = settings
        self.host, self.port = host, port
        self.sockets = bind_sockets(host, port, workers)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.exits: list[float] = []
        self.stopping = False
        self.metrics_dir: str | None = None
        self.env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
        if "password_hash_concurrency" not in settings.model_fields_set:
            # The default is the machine's cores, shared among the workers (not each's).
            self.env["PASSWORD_HASH_CONCURRENCY"] = str(hash_threads_per_worker(workers))

    def run(self) -> int:
        """Serve until a stop signal; the exit status."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        listener = None
        try:
            listener = self._start_metrics()
            for i in range(len(self.sockets)):
                if self.stopping:  # a stop signal while the workers start
                    return 0
                self._spawn(i)
            log.info("serving on %s:%d with %d worker(s)", self.host, self.port, len(self.sockets))
            return self._watch()
        finally:
            self._stop_workers()
            if listener is not None:
                listener.close()
            for sock in self.sockets:
                sock.close()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _start_metrics(self) -> MetricsListener | None:
        s = self.settings
        if s.metrics_port is None:
            return None
        # Every worker writes its figures to files here; the listener sums them. Made fresh
        # for each run, so a scrape never counts a previous run's requests; named after this
        # process, so that the next run removes it if this one is killed before it can
        # (`__init__`).
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        # Imported only now: prometheus-client picks its file-backed values at import.
        from conductor_api.metrics.exposition import MetricsListener
        from conductor_api.metrics.service import Metrics

        metrics = Metrics()  # every metric at 0 in the files before any worker has started
        try:
            listener = MetricsListener(
                s.metrics_host, s.metrics_port, self.metrics_dir, metrics.declared()
            )
        except OSError as e:
            error = _listen_error(s.metrics_host, s.metrics_port, e)
            name = "METRICS_HOST" if error.host_fault else "METRICS_PORT"
            raise ServeError(f"{name}: {error}") from None
        listener.start()
        host = f"[{s.metrics_host}]" if ":" in s.metrics_host else s.metrics_host  # IPv6
        log.info("metrics on http://%s:%d/metrics", host, s.metrics_port)
        return listener

    def _spawn(self, i: int) -> None:
        fd = self.sockets[i].fileno()
        # Ctrl-C reaches every process of the group, and the supervisor stops the workers
        # itself (SIGTERM): a worker is born with SIGINT blocked (the mask survives fork and
        # exec), so one still starting Python prints no KeyboardInterrupt traceback. Blocked,
        # not ignored: a Ctrl-C meanwhile waits for the supervisor instead of being lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            # Our own interpreter and module, no input from outside.
            self.procs[i] = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "conductor_api.serving.worker", str(fd), str(os.getpid())],
                pass_fds=(fd,),
                env=self.env,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _watch(self) -> int:
        while not self.stopping:
            for i, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                self._forget(proc.pid)
                if proc.returncode == STARTUP_FAILURE:
                    log.error("a worker could not start; stopping")
                    return 1
                now = time.monotonic()
                self.exits = [t for t in self.exits if now - t < RESTART_WINDOW] + [now]
                if len(self.exits) > MAX_RESTARTS:
                    log.error("workers keep exiting; stopping")
                    return 1
                log.warning("worker %d exited with status %d; starting another", proc.pid,
                            proc.returncode)  # fmt: skip
                self._spawn(i)
            time.sleep(0.2)
        return 0

    def _stop_workers(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SECONDS
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for done in self.procs:
            if done is not None:
                self._forget(done.pid)

    def _forget(self, pid: int) -> None:
        """Drop a dead worker's live gauges (the hash queue) from the sums."""
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
