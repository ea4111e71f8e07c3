"""The express path: a room's share sent to many idle sockets in one pass.

Real loopback connections: each server side is a real ``tcp.Server``
transport (over a MemoryReactor, so the test decides when Twisted's own
write loop runs) carrying a real ChatProtocol of a ChatFactory driven by a
Clock. Every flush of these tests is audited: a member whose express handle
is set must be one whose share the normal path would also write straight
to its socket (nothing queued in the protocol, the output or the transport).
"""

import json
import socket

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import fanout
from twisted_chat.delivery import directwrite
from twisted_chat.events import JSON, TEXT
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory


class _Port:
    def __init__(self):
        self._realPortNumber = 0

    def _buildAddr(self, addr):
        return IPv4Address("TCP", *addr)


class TCPConn:
    """One real loopback connection into the factory."""

    def __init__(self, case, listener, factory=None):
        self.case = case
        self.peer = socket.create_connection(listener.getsockname())
        case.addCleanup(self.peer.close)
        self.peer.setblocking(False)
        sock, addr = listener.accept()
        sock.setblocking(False)
        case.addCleanup(sock.close)
        factory = case.factory if factory is None else factory
        self.proto = factory.buildProtocol(IPv4Address("TCP", *addr))
        self.transport = tcp.Server(sock, self.proto, addr, _Port(), 1, case.reactor)
        self.proto.makeConnection(self.transport)
        case.addCleanup(self.lost)
        self.buffer = b""

    def lost(self):
        if self.transport.connected:
            self.transport.connectionLost(Failure(ConnectionDone()))

    @property
    def member(self):
        return self.proto.outlet.member

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


class ExpressTests(ExpressTestCase):
    def test_a_registered_tcp_member_is_express_and_gets_the_share(self):
        a, b, c = self.connect("alice"), self.connect("bob"), self.connect("carol", TEXT)
        for conn in (a, b, c):
            self.assertIs(conn.member.express, conn.transport.socket)
        self.assertEqual(c.member.express_via[1], TEXT)
        a.send("hello")
        a.send("again")
        self.assertEqual(b.texts(), ["hello", "again"])
        self.assertEqual(a.texts(), ["hello", "again"])  # JSON echo
        self.assertEqual([line.split("> ", 1)[1] for line in c.lines()], ["hello", "again"])
        self.assertGreater(self.audited, 0)
        self.assertIs(b.member.express, b.transport.socket)

    def test_other_transports_never_are(self):
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5))
        proto = self.factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        proto.dataReceived(b"/nick sam\n")
        self.clock.advance(0)
        self.assertIsNone(proto.member.express)
        a = self.connect("alice")
        a.send("hi")
        self.assertIn(b"<alice> hi", transport.value())

    def test_a_queued_direct_event_clears_it_until_the_turn_is_written(self):
        a, b = self.connect("alice"), self.connect("bob")
        b.proto.dataReceived(b"/ping p\n")
        self.assertIsNone(b.member.express)
        a.proto.dataReceived(b"m1\n")
        self.clock.advance(0)
        self.assertEqual([(e["type"], e.get("text") or e.get("token")) for e in b.events()],
                         [("pong", "p"), ("message", "m1")])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_paused_output_holds_the_share_and_comes_back_in_order(self):
        a, b = self.connect("alice"), self.connect("bob")
        b.proto.output.pauseProducing()
        self.assertIsNone(b.member.express)
        a.send("m1")
        a.send("m2")
        self.assertEqual(b.texts(), [])
        b.proto.output.resumeProducing()
        b.drain()
        a.send("m3")
        self.assertEqual(b.texts(), ["m1", "m2", "m3"])
        a.send("m4")
        self.assertIs(b.member.express, b.transport.socket)
        self.assertEqual(b.texts(), ["m4"])

    def test_what_a_socket_does_not_take_waits_and_later_shares_go_behind(self):
        a, b = self.connect("alice"), self.connect("bob")
        big = "x" * 60000
        sent = []
        for i in range(200):  # ~12 MB: far more than the socket buffers take
            if b.transport._tempDataLen:
                break
            a.send(f"{i} {big}")
            sent.append(f"{i} {big}")
        self.assertGreater(b.transport._tempDataLen, 0)
        self.assertIsNone(b.member.express)
        a.send("tail")
        sent.append("tail")
        got = []
        while len(got) < len(sent):
            b.drain()
            got += b.texts()
            if b.proto.output.paused:
                b.proto.output.resumeProducing()
        self.assertEqual(got, sent)
        a.send("after")
        self.assertEqual(b.texts(), ["after"])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_failing_socket_leaves_the_error_to_its_transport(self):
        import struct

        a, b, c = self.connect("alice"), self.connect("bob"), self.connect("carol")
        b.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.peer.close()
        for _ in range(500):
            try:
                b.transport.socket.recv(1)
            except BlockingIOError:
                import time
                time.sleep(0.01)
            except OSError:
                break  # the reset has arrived
        a.send("still here")
        self.assertEqual(c.texts(), ["still here"])
        self.assertIsNone(b.member.express)
        self.assertGreater(b.transport._tempDataLen, 0)  # Twisted meets the error

    def test_closing_clears_it(self):
        a, b = self.connect("alice"), self.connect("bob")
        b.send("/quit bye")
        self.assertIsNone(b.member.express)
        a.send("later")
        self.assertEqual(a.texts()[-1:], ["later"])

    def test_a_mode_change_moves_it_to_the_other_group(self):
        a, b = self.connect("alice"), self.connect("bob", TEXT)
        self.assertEqual(b.member.express_via[1], TEXT)
        b.send("/mode json")
        b.lines()
        self.assertEqual(b.member.express_via[1], JSON)
        a.send("hi")
        self.assertEqual(b.texts(), ["hi"])

    def test_shutdown_keeps_the_member_in_its_room_but_not_express(self):
        a, b = self.connect("alice"), self.connect("bob")
        b.proto.shutdown()
        self.assertIsNone(b.member.express)
        self.assertIn(b.member, list(self.hub.rooms.values())[0].members)
        a.send("after shutdown")
        self.assertNotIn("after shutdown", [e.get("text") for e in b.events()])

    def test_any_shared_rendering_is_express(self):
        from .test_render import frames  # registers the rendering test-frame

        a, b = self.connect("alice"), self.connect("bob")
        b.proto.outlet.set_mode("test-frame")
        self.assertEqual(b.member.express_via[1], "test-frame")
        self.assertIs(b.member.express, b.transport.socket)
        audited = self.audited
        a.send("framed")
        self.clock.advance(0)
        b.read()
        self.assertEqual([e.get("text") for e in frames(b.buffer)], ["framed"])
        self.assertGreater(self.audited, audited)
        self.assertEqual(a.texts(), ["framed"])

    def test_a_personal_event_is_rendered_for_each_express_member(self):
        from . import test_render  # noqa: F401 (registers the rendering test-addressed)

        a, b, c = self.connect("alice"), self.connect("bob"), self.connect("carol")
        for conn in (b, c):
            conn.lines()
            conn.proto.outlet.set_mode("test-addressed")
            self.assertIs(conn.member.express, conn.transport.socket)
        a.send("psst")
        for conn, nick in ((b, "bob"), (c, "carol")):
            conn.read()
            self.assertEqual(conn.buffer, f"{nick}: message psst\r\n".encode())
            self.assertIs(conn.member.express, conn.transport.socket)
        self.assertEqual(a.texts(), ["psst"])
        self.assertGreater(self.audited, 0)
