"""The express tests' scaffolding, shared by every face's: real loopback
connections into a factory (:class:`TCPConn`), and a test case whose every
flush is audited (:class:`ExpressTestCase`): a member whose express handle is
set must be one whose share the normal path would also write straight to its
socket (nothing queued in the protocol, the output or the transport); and the
floods that fill a socket or cut a slow consumer.
"""

import json
import socket

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import fanout
from twisted_chat.delivery import directwrite
from twisted_chat.events import JSON
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory

from .loopback import Port, accept


class TCPConn:
    """One real loopback connection into the factory."""

    def __init__(self, case, listener, factory=None):
        self.case = case
        self.peer, sock, addr = accept(case, listener)
        self.peer.setblocking(False)
        factory = case.factory if factory is None else factory
        self.proto = factory.buildProtocol(IPv4Address("TCP", *addr))
        self.transport = tcp.Server(sock, self.proto, addr, Port(), 1, case.reactor)
        self.proto.makeConnection(self.transport)
        case.addCleanup(self.lost)
        self.buffer = b""

    def lost(self):
        if self.transport.connected:
            self.transport.connectionLost(Failure(ConnectionDone()))

    @property
    def member(self):
        return self.proto.outlet.member

    @property
    def output(self):
        """Its BoundedOutput (paused while its backlog is over high water)."""
        return self.proto.outlet.output

    def send(self, line: str):
        self.proto.dataReceived(line.encode() + b"\n")
        self.case.clock.advance(0)

    def drain(self):
        """Let Twisted's write loop run until the transport holds nothing."""
        while self.transport._tempDataLen or self.transport.dataBuffer:
            self.transport.doWrite()
            self.read()

    def read(self):
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.buffer += chunk

    def lines(self):
        self.case.clock.advance(0)
        self.read()
        *done, self.buffer = self.buffer.split(b"\r\n")
        return [line.decode() for line in done]

    def events(self):
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def texts(self):
        return [e["text"] for e in self.events() if e["type"] == "message"]


class ExpressTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(clock=self.clock.seconds)
        # Long lines, no rate limit and a deep backlog, for the full-socket test.
        self.factory = ChatFactory(self.hub, clock=self.clock, max_line=65536, rate=1e6,
                                   burst=10 ** 6, max_backlog=64 << 20)
        self.reactor = MemoryReactor()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.addCleanup(self.listener.close)
        self.audited = 0
        original = fanout.flush

        def audited_flush(room):
            for member in room.members:
                if member.express is not None:
                    self.audited += 1
                    sink = member.sink
                    self.assertIs(member.express, sink.output.socket)
                    self.assertEqual(sink._out, [])
                    self.assertTrue(directwrite.idle(sink.output))
                    self.assertEqual(member.express_via[1], sink.mode)
            original(room)

        self.patch(fanout, "flush", audited_flush)

    def connect(self, nick, mode=JSON):
        c = TCPConn(self, self.listener)
        if mode == JSON:
            c.send("/mode json")
        c.send(f"/nick {nick}")
        c.lines()
        return c

    def fill(self, sender, b):
        """Big lines from ``sender`` until ``b``'s socket takes no more and
        Twisted holds the rest (so ``b`` has lost its express handle); the
        lines sent."""
        big = "x" * 60000
        sent = []
        for i in range(200):  # ~12 MB: far more than the socket buffers take
            if b.transport._tempDataLen:
                break
            sender.send(f"{i} {big}")
            sent.append(f"{i} {big}")
        self.assertGreater(b.transport._tempDataLen, 0)
        self.assertIsNone(b.member.express)
        return sent

    def receive(self, b, read, until):
        """Let ``b``'s socket be written and read until ``until(got)``, where
        ``got`` is all that ``read(b)`` returned, in order; ``b``'s output is
        resumed whenever it paused (its backlog over high water)."""
        got = []
        while not until(got):
            b.drain()
            got += read(b)
            if b.output.paused:
                b.output.resumeProducing()
        return got

    def overflow(self, sender, b, c):
        """Big lines from ``sender`` until ``b``, which reads nothing, is cut
        as a slow consumer; ``c`` reads (and drops) them all meanwhile."""
        big = "y" * 60000
        for i in range(200):
            if b.member.gone:
                break
            sender.send(f"{i} {big}")
            c.read()
            c.buffer = b""
