"""Prometheus metrics every service shares, and the buckets Crucible's histograms use."""

from __future__ import annotations

from prometheus_client import Counter

# Jobs take from milliseconds (a print) to a minute (the wall-time ceiling).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Waiting in the queue may take much longer under load.
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)

NATS_RECONNECTS = Counter(
    "crucible_nats_reconnects",
    "Times this process reconnected to NATS after losing its connection.",
)
