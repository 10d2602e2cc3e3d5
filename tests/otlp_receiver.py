"""A real OTLP/HTTP receiver for tests: services export to it exactly as they would to Jaeger."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_PROTOBUF = "application/x-protobuf"
_TRACES = "/v1/traces"
# Accepted and dropped: a service exporting metrics or logs must not see errors from us.
_PATHS = (_TRACES, "/v1/metrics", "/v1/logs")


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids as lowercase hex, as a test wants to compare them."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: str  # e.g. "SPAN_KIND_SERVER"
    service_name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace_id, span_id)
    events: list[str] = field(default_factory=list)  # span event names
    duration_s: float = 0.0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=Span.SpanKind.Name(span.kind),
                        service_name=str(resource.get("service.name", "")),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        events=[event.name for event in span.events],
                        duration_s=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                    )
                )
    return spans


class OtlpReceiver:
    """`POST /v1/traces` (protobuf, optionally gzip) on a free loopback port.

    `/v1/metrics` and `/v1/logs` are answered and ignored.
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on 127.0.0.1 at a free port, serving from a daemon thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path not in _PATHS:
                    self.send_error(404)
                    return
                if self.headers.get("Content-Type") != _PROTOBUF:
                    # OTLP/JSON is legal but no exporter here sends it; fail loudly, not silently.
                    self.send_error(415)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == _TRACES:
                    spans = _decode(body)
                    with receiver._lock:
                        receiver._spans.extend(spans)
                # An empty response (no partial_success) means every span was accepted; the
                # metrics and logs responses share that wire form.
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", _PROTOBUF)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test output is not the place for access logs

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and close the listening socket (no ResourceWarning left behind)."""
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
        self._server = self._thread = None

    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """Poll until `predicate(spans)` holds and return those spans; AssertionError on timeout.

        Exporters batch, so "the span was sent" and "the span arrived" are a delay apart.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.spans()
            if predicate(spans):
                return spans
            time.sleep(0.05)
        spans = self.spans()
        names = sorted({(s.service_name, s.name, s.kind) for s in spans})
        raise AssertionError(
            f"spans never matched within {timeout_s}s; received {len(spans)}: {names}"
        )
