"""Measurement, not a test: the room fan-out's cost per delivery for each
face, in one process, without a load generator.

    python tests/measure_face_fanout.py line|irc|irc-tags|ws [--members N]
        [--messages M] [--tcp]

N members of one face (1,000) in the default room; a line-protocol sender
(for ``ws``; else the first member) says M messages (200), one a turn, and
the time the server spends on them is timed: the turn (parsing, the store,
the room flush) and, with ``--tcp``, Twisted's own write loop (``doWrite``)
too. Members are StringTransports, or with ``--tcp`` real loopback sockets
(``tcp.Server`` transports over a MemoryReactor, read after every turn), the
only ones the express sends apply to. ``irc-tags`` members asked for
``server-time`` and ``message-tags``. Prints deliveries/s and how many
members held the express handle at the end.
"""

import argparse
import base64
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import tcp  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import MemoryReactor, StringTransport  # noqa: E402

from twisted_chat.faces.irc.protocol import IRCFactory  # noqa: E402
from twisted_chat.hub import Hub  # noqa: E402
from twisted_chat.protocol import ChatFactory  # noqa: E402
from tests.loopback import Port  # noqa: E402


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126
                            else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def factories(face, clock):
    """A new hub on ``clock``, its line-protocol factory and ``face``'s
    (the same one for ``line``), every limit out of the way: what the
    measurements build their members from."""
    hub = Hub(clock=clock.seconds)
    line = ChatFactory(hub, clock=clock, rate=1e9, burst=10 ** 9, max_clients=0,
                       max_per_ip=0)
    if face == "line":
        return line, line
    if face.startswith("irc"):
        return line, IRCFactory(hub, turn=line.turn, rate=1e9, burst=10 ** 9)
    from twisted_chat.web.session import WebSocketFactory

    web = WebSocketFactory(line)
    web.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                           autoPingInterval=0, autoPingTimeout=0)
    return line, web


def open_websocket(proto):
    """Send a WebSocket session ``proto`` a browser's opening handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    proto.dataReceived((
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: "
        f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("face", choices=["line", "irc", "irc-tags", "ws"])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--tcp", action="store_true")
    a = ap.parse_args()

    clock = Clock()
    line, factory = factories(a.face, clock)
    reactor = MemoryReactor()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    conns = []  # (protocol, transport, client socket or None)

    def connect(i, face):
        addr = IPv4Address("TCP", "127.0.0.1", 10000 + i)
        proto = (line if face == "line" else factory).buildProtocol(addr)
        if a.tcp:
            peer = socket.create_connection(listener.getsockname())
            peer.setblocking(False)
            sock, peer_addr = listener.accept()
            sock.setblocking(False)
            transport = tcp.Server(sock, proto, peer_addr, Port(), 1, reactor)
        else:
            peer, transport = None, StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        if face == "ws":
            open_websocket(proto)
            proto.dataReceived(masked(f"/nick u{i}".encode()))
        elif face == "line":
            proto.dataReceived(f"/nick u{i}\n".encode())
        else:
            if face == "irc-tags":
                proto.dataReceived(b"CAP REQ :server-time message-tags\r\n")
            proto.dataReceived(f"NICK u{i}\r\nUSER u 0 * :u\r\n".encode())
            if face == "irc-tags":
                proto.dataReceived(b"CAP END\r\n")
        clock.advance(0)
        conns.append((proto, transport, peer))
        return proto

    written = [0.0]  # the server's time in Twisted's write loop

    def drain():
        got = 0
        for _, transport, peer in conns:
            if peer is None:
                got += len(transport.value())
                transport.clear()
                continue
            while True:
                try:
                    while True:
                        chunk = peer.recv(1 << 20)
                        if not chunk:
                            break
                        got += len(chunk)
                except BlockingIOError:
                    pass
                if not (transport._tempDataLen or transport.dataBuffer):
                    break
                t0 = time.perf_counter()
                transport.doWrite()
                written[0] += time.perf_counter() - t0
        return got

    for i in range(a.members):
        connect(i, a.face)
    sender = conns[0][0]
    if a.face == "ws":
        sender = connect(a.members, "line")
    clock.advance(5)
    drain()
    text = "hello there, a message of an ordinary length"
    line_in = (f"PRIVMSG #lobby :{text}\r\n" if a.face.startswith("irc") else text + "\n").encode()
    receivers = a.members if a.face == "ws" else a.members - 1
    deliveries = a.messages * receivers
    turns, written[0], received = 0.0, 0.0, 0
    for _ in range(a.messages):
        t0 = time.perf_counter()
        sender.dataReceived(line_in)
        clock.advance(0)
        turns += time.perf_counter() - t0
        received += drain()
    total = turns + written[0]
    express = 0
    for proto, _, _ in conns:
        member = getattr(getattr(proto, "chat", proto), "member", None)
        express += member is not None and member.express is not None
    print(f"{a.face}{' tcp' if a.tcp else ''}: {a.members} members, {a.messages} messages: "
          f"{total * 1000:.1f} ms of server time ({written[0] * 1000:.1f} in doWrite), "
          f"{deliveries / total / 1e6:.2f} M deliveries/s, {received / deliveries:.0f} bytes "
          f"a delivery; {express} members express")


if __name__ == "__main__":
    main()
