"""A TCP proxy on loopback that cuts every connection after some bytes from the server:
a real dropped connection, for testing that clients resume streams by themselves."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

_BUFFER = 4096


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to `upstream_port`; closes each connection after the
    server has sent `cut_after_bytes` through it."""

    def __init__(self, upstream_port: int, cut_after_bytes: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, self.cut_after_bytes)

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        with suppress(OSError):
            while True:
                data = source.recv(_BUFFER)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
