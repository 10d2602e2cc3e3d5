"""A real three-node nats-server cluster with Crucible's configuration, whose routes pass
through relays that can hold one stream's replication back from one node: a follower that
stays connected and answers requests, as far behind as a test wants, for as long as it wants.

Every route between two nodes goes through the relay in front of the accepting node (each
node dials the others' relays and advertises its own, so that no route bypasses them). A
relay reads the route protocol frame by frame:

- while a node is held back for a stream, the append entries of the stream's Raft group on
  their way to the node (`$NRG.AE.<group>`) wait in the relay, in order, and everything else
  passes; released, they go on as if the network had been slow, and the node catches up;
- no node hears of another's direct get responders (their `RS+`, `RS-` stay in the relay),
  so a client's direct gets are answered by the replica of the node it is connected to.
  Without this, the stream's queue group would pick any replica for each request, the one
  held back now and then: a test connects to the node it holds back, and every direct get
  it makes meets the stale replica.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from bus import NatsSettings, connect
from crucible.natsconf import NatsLayout, write_nats_config
from crucible.up import nats_server_binary
from tests.stack import free_port, free_ports, wait_for_port

NODES = 3
_JS_INFO = "$JS.API.INFO"
_BUFFER_BYTES = 65536
_CRLF = b"\r\n"
# Route protocol operations that carry a payload (its size is the line's last token).
_MESSAGE_OPS = {b"RMSG", b"HRMSG", b"LMSG", b"HLMSG"}
# A node telling another of a subscription (or of its end).
_INTEREST_OPS = {b"RS+", b"RS-"}
_DIRECT_GET = b"$JS.API.DIRECT.GET."


class _Hold:
    """What the relays hold back: the append entries of `group` on their way to `node`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.node: str | None = None
        self.entries = b""  # the subject of the group's append entries

    def holds(self, to_node: str | None, tokens: list[bytes]) -> bool:
        # `RMSG <account> <subject> ...`, or `RMSG <subject> ...` on a route of one account.
        return self.node is not None and to_node == self.node and self.entries in tokens[1:3]


@dataclass
class _Pipe:
    """One direction of one relayed route connection."""

    source: socket.socket
    sink: socket.socket
    names: dict[str, str]  # "dialer"/"acceptor": the nodes' names, once their INFO went by
    sender: str  # the key in `names` of the node that sends this way
    receiver: str
    held: list[bytes] = field(default_factory=list)


class RouteRelay:
    """Forwards 127.0.0.1:<port> to a node's route port, frame by frame (see the module)."""

    def __init__(self, upstream_port: int, hold: _Hold) -> None:
        self.upstream_port = upstream_port
        self._hold = hold
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pipes: list[_Pipe] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self._listener.close()
        with self._hold.lock:
            for pipe in self._pipes:
                with suppress(OSError):
                    pipe.source.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def release(self) -> None:
        """Send on what was held back (the caller holds the hold's lock)."""
        for pipe in self._pipes:
            for frame in pipe.held:
                with suppress(OSError):
                    pipe.sink.sendall(frame)
            pipe.held.clear()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                dialer, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the node is not up yet: its peer dials again
                dialer.close()
                continue
            for end in (dialer, upstream):  # frames go on as they come
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            names: dict[str, str] = {}
            out = _Pipe(dialer, upstream, names, sender="dialer", receiver="acceptor")
            back = _Pipe(upstream, dialer, names, sender="acceptor", receiver="dialer")
            with self._hold.lock:
                self._pipes += [out, back]
            self._spawn(self._pump, out)
            self._spawn(self._pump, back)

    def _pump(self, pipe: _Pipe) -> None:
        buffer = b""
        with suppress(OSError):
            while data := pipe.source.recv(_BUFFER_BYTES):
                buffer += data
                while (frame := _next_frame(buffer)) is not None:
                    buffer = buffer[len(frame) :]
                    self._forward(pipe, frame)
        with suppress(OSError):
            pipe.sink.shutdown(socket.SHUT_RDWR)  # the other way ends too, and closes its own
        pipe.source.close()

    def _forward(self, pipe: _Pipe, frame: bytes) -> None:
        line = frame[: frame.index(_CRLF)]
        tokens = line.split()
        op = tokens[0].upper() if tokens else b""
        if op == b"INFO" and pipe.sender not in pipe.names:
            pipe.names[pipe.sender] = json.loads(line[len(b"INFO") :])["server_name"]
        if op in _INTEREST_OPS and any(token.startswith(_DIRECT_GET) for token in tokens[1:3]):
            return
        with self._hold.lock:
            if op in _MESSAGE_OPS and self._hold.holds(pipe.names.get(pipe.receiver), tokens):
                pipe.held.append(frame)
            else:
                pipe.sink.sendall(frame)


def _next_frame(buffer: bytes) -> bytes | None:
    """The first whole protocol frame in `buffer` (a line, with its payload for messages)."""
    end = buffer.find(_CRLF)
    if end < 0:
        return None
    tokens = buffer[:end].split()
    if tokens and tokens[0].upper() in _MESSAGE_OPS:
        size = end + 2 + int(tokens[-1]) + 2
        return buffer[:size] if len(buffer) >= size else None
    return buffer[: end + 2]


@dataclass
class ClusterNode:
    name: str
    url: str
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """Three nats-server nodes with Crucible's identities, their routes relayed."""

    def __init__(self, state_dir: Path) -> None:
        self._hold = _Hold()
        route_ports = [free_port() for _ in range(NODES)]
        self._relays = [RouteRelay(port, self._hold) for port in route_ports]
        self.layout: NatsLayout = write_nats_config(
            state_dir, free_ports(NODES), route_ports=route_ports
        )
        self.nodes: list[ClusterNode] = []
        for index, config_file in enumerate(self.layout.config_files):
            config = json.loads(config_file.read_text())
            cluster = config["cluster"]
            auth = cluster["authorization"]
            cluster["routes"] = [
                f"nats-route://{auth['user']}:{auth['password']}@127.0.0.1:{relay.port}"
                for other, relay in enumerate(self._relays)
                if other != index
            ]
            cluster["advertise"] = f"127.0.0.1:{self._relays[index].port}"
            cluster["compression"] = "off"  # the relays read the protocol
            config_file.write_text(json.dumps(config))
            url = self.layout.url.split(",")[index]
            log_file = state_dir / f"nats-{index + 1}.log"
            self.nodes.append(ClusterNode(config["server_name"], url, config_file, log_file))

    def start(self) -> None:
        for relay in self._relays:
            relay.start()
        for node in self.nodes:
            with node.log_file.open("wb") as log:
                node.process = subprocess.Popen(
                    [nats_server_binary(), "-c", str(node.config_file)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for node in self.nodes:
            wait_for_port(int(node.url.rsplit(":", 1)[1]))

    async def ready(self, timeout_s: float) -> None:
        """Until JetStream answers: the nodes have met and elected a meta leader."""
        nc = await connect(self.settings("debug"), "debug", "cluster-ready")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    with suppress(Exception):
                        answer = await nc.request(_JS_INFO, b"", timeout=1)
                        if b'"error"' not in answer.data:
                            return
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def stop(self) -> None:
        self.release()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                node.process.wait(10)
        for relay in self._relays:
            relay.stop()

    def settings(self, service: str, node: str | None = None) -> NatsSettings:
        """How `service` connects: to the node named `node` alone, or to any."""
        url = next(n.url for n in self.nodes if n.name == node) if node else self.layout.url
        return NatsSettings(url=url, creds_file=self.layout.creds_files[service])

    def hold_back(self, node: str, raft_group: str) -> None:
        """From now on, `node` gets no more of `raft_group`'s log (until `release`)."""
        with self._hold.lock:
            self._hold.node, self._hold.entries = node, f"$NRG.AE.{raft_group}".encode()

    def release(self) -> None:
        """Let the node held back have what it missed, and what comes."""
        with self._hold.lock:
            self._hold.node = None
            for relay in self._relays:
                relay.release()
