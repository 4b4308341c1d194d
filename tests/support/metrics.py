"""The gateway's /metrics page as values: scrapes, sums of labelled samples, growth, waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway_process import GatewayProcess

REJECTED = "audiohook_connections_rejected_total"
PROTOCOL_ERRORS = "audiohook_protocol_errors_total"
DISCONNECTS = "audiohook_disconnects_sent_total"
SESSIONS_ACTIVE = "audiohook_sessions_active"


@dataclass(frozen=True)
class Scrape:
    """One parsed /metrics page."""

    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(
            [
                (sample.name, dict(sample.labels), float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            ]
        )

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when absent)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )


class Growth:
    """How much samples grew between two scrapes: `Growth(before, after)(name, **labels)`."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)


def metric_value(gateway: GatewayProcess, sample: str, **labels: str) -> float:
    """Sum of the gateway's samples named `sample` whose labels include `labels` (0 when absent)."""
    return Scrape.parse(gateway.metrics_text()).value(sample, **labels)


class MetricDelta:
    """Reads a counter before and after: `delta()` is how much it grew."""

    def __init__(self, gateway: GatewayProcess, sample: str, **labels: str) -> None:
        self.gateway, self.sample, self.labels = gateway, sample, labels
        self.before = metric_value(gateway, sample, **labels)

    def delta(self) -> float:
        return metric_value(self.gateway, self.sample, **self.labels) - self.before


async def wait_for_metric(
    gateway: GatewayProcess, sample: str, value: float, timeout: float = 5.0, **labels: str
) -> None:
    """Poll until the sample reaches `value` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (current := metric_value(gateway, sample, **labels)) != value:
        assert time.monotonic() < deadline, f"{sample}{labels} is {current}, expected {value}"
        await asyncio.sleep(0.05)


async def scrape(gateway: GatewayProcess) -> Scrape:
    """The gateway's metrics, read without blocking the event loop."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{gateway.metrics_url}/metrics")
    response.raise_for_status()
    return Scrape.parse(response.text)


async def scrape_when(
    gateway: GatewayProcess, condition: Callable[[Scrape], bool], what: str, timeout: float = 10.0
) -> Scrape:
    """The first scrape for which `condition` holds (metrics settle after the socket closes)."""
    deadline = time.monotonic() + timeout
    while True:
        current = await scrape(gateway)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never showed {what}")
        await asyncio.sleep(0.05)
