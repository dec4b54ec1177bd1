"""Every metric of the contract, built per application (never at import) on its own
registry. With `PROMETHEUS_MULTIPROC_DIR` set (by `serve` when metrics are on) the values
live in files that the metrics listener sums over every worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from conductor_api.errors import AppError
from conductor_api.values import TokenPair

# HTTP: a cached /auth/me answers in about a millisecond; a login waits for a hash (tens of
# ms) and a database outage for the timeout (seconds).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Argon2id at 19 MiB and 2 passes takes 20-60 ms on one core; more means the cores are busy.
HASH_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

LOGIN_METHODS = ("password", "passkey")
LOGIN_RESULTS = ("succeeded", "failed", "locked", "throttled", "disabled", "mfa_required")
REFRESH_RESULTS = ("rotated", "grace", "reused", "invalid")
# Error codes of a refused login, by the result the counter shows.
_LOGIN_RESULT_OF = {
    "invalid_credentials": "failed",
    "invalid_passkey": "failed",
    # The second step of a sign-in (`/auth/mfa/verify`): a wrong code, or a pending
    # sign-in that is unknown, spent or expired, is a failed attempt like a wrong password.
    "invalid_mfa_code": "failed",
    "invalid_mfa_token": "failed",
    # A DPoP proof that does not verify counts against the address like a wrong password;
    # `use_dpop_nonce` is a step of the protocol (the client retries with the nonce): none.
    "invalid_dpop_proof": "failed",
    "account_locked": "locked",
    "too_many_attempts": "throttled",
    "account_disabled": "disabled",
    "mfa_required": "mfa_required",
}
_REFRESH_RESULT_OF = {
    "invalid_refresh_token": "invalid",
    "refresh_token_reused": "reused",
    "invalid_dpop_proof": "invalid",
}
# The `method` label takes these (RFC 9110's methods, and PATCH) or "other": a client must
# not be able to mint label values.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class Metrics:
    """The application's metrics; labels hold templates, methods and outcomes, never a
    username, address or token."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "conductor_http_requests", "HTTP responses by method, route template and status.",
            ("method", "route", "status"), registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "conductor_http_request_duration_seconds",
            "Time from request to the last byte of the response, by method and route template.",
            ("method", "route"), buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.logins = Counter(
            "conductor_logins", "Sign-in attempts by method and result.", ("method", "result"),
            registry=r,
        )  # fmt: skip
        self.refreshes = Counter(
            "conductor_refreshes", "Refresh-token presentations by result.", ("result",),
            registry=r,
        )  # fmt: skip
        self.hash_seconds = Histogram(
            "conductor_password_hash_seconds",
            "Time of each password hash computed, verifications included.",
            buckets=HASH_BUCKETS, registry=r,
        )  # fmt: skip
        self.hash_queue = Gauge(
            "conductor_password_hash_queue", "Password hashes waiting for a hashing thread.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.database_errors = Counter(
            "conductor_database_errors", "Requests that failed because of the database.",
            registry=r,
        )  # fmt: skip
        # Every outcome exists from the start at 0, so that rate() and alerts see the first one.
        for method in LOGIN_METHODS:
            for result in LOGIN_RESULTS:
                self.logins.labels(method, result)
        for result in REFRESH_RESULTS:
            self.refreshes.labels(result)

    def declared(self) -> list[Metric]:
        """Every metric's name, help and type, without samples: what a scrape shows of a
        labelled metric before its first sample."""
        collectors = (
            self.http_requests, self.http_duration, self.logins, self.refreshes,
            self.hash_seconds, self.hash_queue, self.database_errors,
        )  # fmt: skip
        return [family for collector in collectors for family in collector.describe()]

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    @contextmanager
    def counting_login(self, method: str) -> Iterator[None]:
        """Count the sign-in attempt run inside: succeeded, or the result its error means."""
        try:
            yield
        except AppError as e:
            result = _LOGIN_RESULT_OF.get(e.code)
            if result is not None:
                self.logins.labels(method, result).inc()
            raise
        self.logins.labels(method, "succeeded").inc()

    @contextmanager
    def counting_refresh(self) -> Iterator[None]:
        """Count a refused refresh run inside by its error; `refreshed` counts a success."""
        try:
            yield
        except AppError as e:
            result = _REFRESH_RESULT_OF.get(e.code)
            if result is not None:
                self.refreshes.labels(result).inc()
            raise

    def refreshed(self, pair: TokenPair) -> TokenPair:
        """Count a successful refresh: a rotation, or the grace window's repeat answer."""
        self.refreshes.labels("grace" if pair.grace else "rotated").inc()
        return pair

    def database_error(self) -> None:
        """Count a request that the database failed."""
        self.database_errors.inc()

    # The password hasher's observer (see `security.passwords.HashObserver`).
    def hash_queued(self) -> None:
        """A hash is waiting for a thread."""
        self.hash_queue.inc()

    def hash_dequeued(self) -> None:
        """A hash left the queue: a thread took it, or it was cancelled."""
        self.hash_queue.dec()

    def hash_done(self, seconds: float) -> None:
        """A hash took `seconds` on its thread."""
        self.hash_seconds.observe(seconds)

    def render(self) -> bytes:
        """This process's metrics in the text format (tests; `serve` sums every worker)."""
        return generate_latest(self.registry)
