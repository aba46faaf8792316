"""Reading a job's server-sent events in tests that talk real HTTP (``tests/integration``,
``tests/ingress``)."""

from __future__ import annotations

import json
from typing import Any

import httpx


def stream_events(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every ``data:`` payload of the event stream at ``url``, in order, until it ends."""
    events = []
    with http.stream("GET", url) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events
