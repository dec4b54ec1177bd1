"""Reading the Prometheus text format with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# What each response code of a sign-in or refresh must be counted as.
LOGIN_RESULT = {
    200: "succeeded",
    "invalid_credentials": "failed",
    "account_locked": "locked",
    "too_many_attempts": "throttled",
    "account_disabled": "disabled",
}
REFRESH_RESULT = {"invalid_refresh_token": "invalid", "refresh_token_reused": "reused"}


class Scrape:
    """One scrape: its samples by name and labels, and each family's type."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), s.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def has(self, name: str, **labels: str) -> bool:
        """Whether any sample matches."""
        return any(n == name and labels.items() <= ls.items() for n, ls, _ in self.samples)

    def label_values(self) -> set[str]:
        """Every label value of every sample."""
        return {v for _, ls, _ in self.samples for v in ls.values()}
