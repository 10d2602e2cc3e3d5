"""The worker's end of a warm container: its keeper's stdin, stdout and stderr, attached.

A container is attached before it starts (`Attached.open`), so a job later costs no call to
the engine: the step goes down the socket, its output comes back as Docker's multiplexed
frames, and the keeper's end mark (see `docker_keeper.py`) says when and how it ended.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from contextlib import suppress
from typing import Any

import docker
from docker.models.containers import Container

from sandbox.docker_keeper import MARK, READY, STATUS_DIGITS
from sandbox.models import Stream

_FRAME_HEADER = struct.Struct(">BxxxL")  # docker's multiplexed stream: kind, size
_STDOUT = 1
_STREAMS: dict[int, Stream] = {_STDOUT: "stdout", 2: "stderr"}
_READ_BYTES = 65536
_ATTACH = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}  # never `logs`: none are kept
_PUMP_JOIN_S = 2.0

Frame = tuple[Stream, bytes]


class KeeperError(docker.errors.DockerException):
    """A container's keeper did not start (a broken image): the container is not used."""


class Attached:
    """One pooled container and its attach socket, used for one job."""

    def __init__(self, container: Container, sock: Any) -> None:
        self.container = container
        self._sock = sock
        # The SDK wraps the connection's socket; reading and writing need the socket itself.
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.keeper_mb = 0.0  # the keeper's own memory, where its cgroup can be read
        self._pump: threading.Thread | None = None

    @classmethod
    def open(cls, client: docker.DockerClient, create: dict[str, object]) -> Attached:
        """Blocking: create the container, attach to it, start it and wait for its keeper."""
        container = client.containers.create(**create)
        attached = None
        try:
            # Attached before it starts: nothing it writes is missed.
            attached = cls(container, client.api.attach_socket(container.id, params=_ATTACH))
            container.start()
            attached._wait_ready()
        except BaseException:
            with suppress(docker.errors.DockerException):
                container.remove(force=True)
            if attached is not None:
                attached.close()
            raise
        return attached

    def _wait_ready(self) -> None:
        """Until the keeper says it waits for its job (it starts a Python: tens of ms)."""
        said = b""
        while len(said) < len(READY):
            kind, size = _FRAME_HEADER.unpack(self._read_exactly(_FRAME_HEADER.size))
            payload = self._read_exactly(size)
            said += payload if kind == _STDOUT else b""
            if kind != _STDOUT or not READY.startswith(said):
                raise KeeperError(f"the container's keeper did not start: {payload[-500:]!r}")

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = self._raw.recv(size - len(data))
            if not more:
                raise KeeperError("the container stopped before its keeper started")
            data += more
        return data

    @property
    def tls(self) -> bool:
        # A TLS socket must not be read and written by two threads at once.
        return isinstance(self._raw, ssl.SSLSocket)

    @property
    def alive(self) -> bool:
        """False once the stream has ended: the container stopped (seen only while listening)."""
        return self._pump is None or self._pump.is_alive()

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read frames into `frames`, in a thread of their own, until the stream ends."""
        if self._pump is None:
            self._pump = threading.Thread(target=self._read, args=(loop,), daemon=True)
            self._pump.start()

    def send(self, data: bytes) -> None:
        """Blocking: write `data` to the keeper's stdin."""
        self._raw.sendall(data)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """Demultiplex the socket into (stream, bytes) items; None at the end."""
        buffer = b""
        try:
            while data := self._raw.recv(_READ_BYTES):
                buffer += data
                while len(buffer) >= _FRAME_HEADER.size:
                    kind, size = _FRAME_HEADER.unpack_from(buffer)
                    if len(buffer) < _FRAME_HEADER.size + size:
                        break
                    payload = buffer[_FRAME_HEADER.size : _FRAME_HEADER.size + size]
                    buffer = buffer[_FRAME_HEADER.size + size :]
                    if kind in _STREAMS:
                        self._put(loop, (_STREAMS[kind], payload))
        except OSError:
            pass  # the container was killed or the socket closed under us: the end
        finally:
            self._put(loop, None)

    def _put(self, loop: asyncio.AbstractEventLoop, item: Frame | None) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody is reading any more
            loop.call_soon_threadsafe(self.frames.put_nowait, item)

    def close(self) -> None:
        """Blocking: let go of the socket; the reader thread ends with it."""
        with suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
        with suppress(OSError):
            self._raw.close()
            self._sock.close()
        if self._pump is not None:
            self._pump.join(_PUMP_JOIN_S)


class EndMark:
    """Finds the keeper's end mark in one stream, passing on the job's bytes before it.

    Bytes that could be the start of the mark wait for the next frame; since the mark starts
    with a NUL and a token no job knows, text output never waits.
    """

    def __init__(self, token: bytes) -> None:
        self._mark = MARK + token
        self._held = b""
        self.status: int | None = None

    @property
    def found(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes) -> bytes:
        """The job's output in `data`; sets `status` once the whole mark has come."""
        data = self._held + data
        at = data.find(self._mark)
        if at >= 0:
            end = at + len(self._mark) + STATUS_DIGITS
            if len(data) >= end:
                self._held = b""
                self.status = int(data[at + len(self._mark) : end])
            else:
                self._held = data[at:]
            return data[:at]  # nothing of the job can follow the mark: its processes are dead
        for size in range(min(len(data), len(self._mark) - 1), 0, -1):
            if data.endswith(self._mark[:size]):
                self._held = data[-size:]
                return data[:-size]
        self._held = b""
        return data

    def rest(self) -> bytes:
        """What was held back, when the stream ended without a mark."""
        held, self._held = self._held, b""
        return held
