"""The express path: a room's share sent to many idle sockets in one pass.

Real loopback connections: each server side is a real ``tcp.Server``
transport (over a MemoryReactor, so the test decides when Twisted's own
write loop runs) carrying a real ChatProtocol of a ChatFactory driven by a
Clock. Every flush of these tests is audited: a member whose express handle
is set must be one whose share the normal path would also write straight
to its socket (nothing queued in the protocol, the output or the transport).
"""

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from twisted_chat.events import JSON, TEXT

from .express_support import ExpressTestCase


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
        sent = self.fill(a, b)
        a.send("tail")
        sent.append("tail")
        got = self.receive(b, lambda b: b.texts(), lambda got: len(got) >= len(sent))
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
