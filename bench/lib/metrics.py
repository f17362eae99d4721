"""A service's Prometheus /metrics, read with prometheus-client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(port: int) -> list[Sample]:
    """Every sample of http://127.0.0.1:{port}/metrics (a service's internal metrics port)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def sums(port: int) -> dict[str, float]:
    """Every metric, summed over its label values."""
    out: dict[str, float] = {}
    for sample in samples(port):
        out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
