"""Which WebSocket library frames a room event best: the per-receiver cost
of sending one event to N WebSocket receivers, no network (a null transport).

    python -m twisted_chat.bench.wsframing [N]

Rows: Twisted's own ``twisted.web.websocket`` (wsproto; needs the
``twisted[websocket]`` extra, skipped without it), which frames every send;
Autobahn's ``sendMessage`` (frames every send) and its
``prepareMessage`` once + ``sendPreparedMessage`` per receiver; and this
server's path (twisted_chat.web.frames: the room's blob framed once by the
FrameCache, then a plain ``write`` per receiver). Best of 20 rounds.
See docs/performance.rst, "The WebSocket face".
"""

import base64
import json
import os
import sys
import time

from twisted.internet.testing import StringTransport

from twisted_chat.web.frames import FrameCache

EVENT = json.dumps({"type": "message", "id": 123456, "ts": "2026-11-24T04:12:00.123Z",
                    "room": "lobby", "nick": "alice", "text": "x" * 120},
                   separators=(",", ":"))
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n")


class _Null:
    """A transport that only counts bytes."""

    def __init__(self):
        self.n = 0

    def write(self, data):
        self.n += len(data)


def _autobahn(n):
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocols = []
    for _ in range(n):
        p = factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(HANDSHAKE % base64.b64encode(os.urandom(16)))
        assert t.value().startswith(b"HTTP/1.1 101"), t.value()
        p.transport = _Null()
        protocols.append(p)
    return factory, protocols


def _twisted(n):
    try:
        from twisted.web._websocket_impl import _WebSocketWireProtocol, serverBootstrap
        from wsproto import ConnectionType
        from wsproto.events import AcceptConnection
        from wsproto.handshake import H11Handshake
    except ImportError:
        return None
    protocols = []
    for _ in range(n):
        hs = H11Handshake(ConnectionType.SERVER)
        hs.initiate_upgrade_connection(
            [(b"host", b"localhost"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
             (b"sec-websocket-key", base64.b64encode(os.urandom(16))),
             (b"sec-websocket-version", b"13")], "/ws")
        hs.send(AcceptConnection())
        w = _WebSocketWireProtocol(hs.connection, serverBootstrap, None)
        w.transport = _Null()
        protocols.append(w)
    return protocols


def _best(fn, rounds=20):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 2000
    payload = EVENT.encode()
    line = payload + b"\r\n"
    factory, ab = _autobahn(n)
    tw = _twisted(n)
    rows = []
    if tw is not None:
        rows.append(("twisted.web.websocket sendTextMessage (frames each send)",
                     lambda: [p.sendTextMessage(EVENT) for p in tw]))
    rows.append(("autobahn sendMessage (frames each send)",
                 lambda: [p.sendMessage(payload) for p in ab]))

    def prepared():
        message = factory.prepareMessage(payload, doNotCompress=True)
        for p in ab:
            p.sendPreparedMessage(message)

    rows.append(("autobahn prepareMessage once + sendPreparedMessage", prepared))
    transports = [p.transport for p in ab]

    def ours():
        cache = FrameCache()
        blob = b"".join([line])  # the turn's room share: one object for all
        for t in transports:
            t.write(cache(blob))

    rows.append(("twisted_chat.web.frames: FrameCache once + write", ours))
    print(f"one {len(payload)}-byte event to {n} WebSocket receivers (best of 20):")
    for label, fn in rows:
        seconds = _best(fn)
        print(f"  {label:58s} {seconds / n * 1e6:6.2f} us/receiver  {seconds * 1e3:7.2f} ms")


if __name__ == "__main__":
    main(sys.argv)
