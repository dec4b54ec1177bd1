"""FastAPI's own OpenTelemetry hooks stay off: the service's telemetry is its Prometheus
metrics, and no request pays for asking OpenTelemetry's global providers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpMeterProvider


class _TracerProvider(trace.TracerProvider):
    """A configured provider (not OpenTelemetry's proxy or no-op one) that notes each use."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(instrumenting_module_name)
        return trace.NoOpTracer()


class _MeterProvider(metrics.MeterProvider):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(name)
        return NoOpMeterProvider().get_meter(name)


async def test_a_configured_opentelemetry_sdk_sees_nothing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracers, meters = _TracerProvider(), _MeterProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracers)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meters)
    for path in ("/health/live", "/api/v1/auth/me", "/nowhere"):
        response = await client.get(path)
        assert response.status_code in (200, 401, 404), path
    assert tracers.asked == []
    assert meters.asked == []
