"""The express path for WebSocket members: a room's share framed once (the
``ws-json`` and ``ws-text`` renderings) and sent to idle WebSocket sockets in
bulk with everybody else's.

Real loopback connections as in ``tests/test_express.py`` (whose audit of
every flush applies here too: a member holding the express handle must be
one whose share the normal path would also write straight to its socket),
each carrying a real Autobahn session of the web face, opened by a real
handshake; line-protocol members share the hub and the turn.
"""

import base64
import json
import os
import struct

from twisted_chat.events import JSON
from twisted_chat.web import frames
from twisted_chat.web.frames import WS_JSON, WS_TEXT
from twisted_chat.web.session import WebSocketFactory

from .express_support import ExpressTestCase, TCPConn


def masked(opcode, payload: bytes) -> bytes:
    """A client's frame (clients mask theirs)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 0x10000:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WSConn(TCPConn):
    """A real loopback connection carrying a WebSocket session."""

    def __init__(self, case, listener, factory):
        super().__init__(case, listener, factory)
        key = base64.b64encode(os.urandom(16)).decode()
        self.proto.dataReceived(
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
             "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.drain()
        self.read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.closed = None

    @property
    def chat(self):
        return self.proto.chat

    @property
    def output(self):
        return self.proto.chat.output

    @property
    def member(self):
        return self.proto.chat.outlet.member

    def send(self, line: str):
        self.send_frame(0x1, line.encode())

    def send_frame(self, opcode, payload):
        self.proto.dataReceived(masked(opcode, payload))
        self.case.clock.advance(0)

    def frames(self):
        """(opcode, payload) of every whole frame received so far."""
        self.case.clock.advance(0)
        self.read()
        out, data = [], self.buffer
        while len(data) >= 2:
            b0, b1 = data[0], data[1]
            assert not b1 & 0x80, "server frames are never masked"
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(data) < 4:
                    break
                n, at = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                if len(data) < 10:
                    break
                n, at = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < at + n:
                break
            out.append((b0 & 0x0F, data[at:at + n]))
            data = data[at + n:]
        self.buffer = data
        return out

    def events(self):
        out = []
        for opcode, payload in self.frames():
            self.case.assertEqual(opcode, 0x1)
            out.append(json.loads(payload))
        return out

    def texts(self):
        return [e["text"] for e in self.events() if e["type"] == "message"]

    def lines(self):
        return [payload.decode() for _, payload in self.frames()]


class WebExpressTestCase(ExpressTestCase):
    def setUp(self):
        super().setUp()
        self.web = WebSocketFactory(self.factory)
        # No timers on the global reactor: this test's clock is a Clock.
        self.web.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                    autoPingInterval=0, autoPingTimeout=0)
        self.conns = []

    def settle(self, c):
        self.conns.append(c)
        for each in self.conns:
            each.frames() if isinstance(each, WSConn) else each.lines()

    def connect(self, nick, *args):
        c = super().connect(nick, *args)
        self.settle(c)
        return c

    def ws_connect(self, nick):
        c = WSConn(self, self.listener, self.web)
        c.send(f"/nick {nick}")
        self.settle(c)
        return c


class WebExpressTests(WebExpressTestCase):
    def test_an_open_session_is_express_and_gets_the_framed_share(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        line = self.connect("carol")
        for conn in (a, b):
            self.assertIs(conn.member.express, conn.transport.socket)
            self.assertEqual(conn.member.express_via[1], WS_JSON)
        self.assertEqual(line.member.express_via[1], JSON)
        audited = self.audited
        a.send("hello")
        line.send("from the line")
        for conn in (a, b):  # the sender gets its own back (JSON mode), with its id
            events = conn.events()
            self.assertEqual([(e["nick"], e["text"]) for e in events],
                             [("alice", "hello"), ("carol", "from the line")])
            self.assertIsInstance(events[0]["id"], int)
        self.assertEqual(line.texts(), ["hello", "from the line"])
        self.assertGreater(self.audited, audited)
        for conn in (a, b):
            self.assertIs(conn.member.express, conn.transport.socket)

    def test_an_event_is_framed_once_for_every_session(self):
        sessions = [self.ws_connect(f"w{i}") for i in range(4)]
        framed = []
        original = frames.frame
        self.patch(frames, "frame", lambda payload: framed.append(payload) or original(payload))
        line = self.connect("carol")
        framed[:] = []
        line.send("once")
        self.assertEqual(len(framed), 1)
        for conn in sessions:
            self.assertEqual(conn.texts(), ["once"])

    def test_text_mode_is_framed_text_in_its_own_group(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.send("/mode text")
        self.assertEqual(b.lines(), ["-- mode text"])
        self.assertEqual(b.member.express_via[1], WS_TEXT)
        self.assertFalse(b.member.echo)
        self.assertIs(b.member.express, b.transport.socket)
        a.send("hi")
        (text,) = b.lines()
        self.assertTrue(text.endswith("#lobby <alice> hi"), text)
        b.send("/mode json")
        self.assertEqual(b.events()[0]["type"], "welcome")
        self.assertEqual(b.member.express_via[1], WS_JSON)
        self.assertTrue(b.member.echo)

    def test_express_from_the_first_write_after_the_handshake(self):
        c = TCPConn(self, self.listener, self.web)
        key = base64.b64encode(os.urandom(16)).decode()
        c.proto.dataReceived(
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
             "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        # The 101 answer went straight to the socket: nothing waits in the
        # transport, so the session's welcome does too, and it is express.
        self.assertEqual(c.transport._tempDataLen, 0)
        self.clock.advance(0)
        self.assertIs(c.proto.chat.outlet.member.express, c.transport.socket)
        c.read()
        self.assertTrue(c.buffer.startswith(b"HTTP/1.1 101"))

    def test_the_sessions_own_frames_go_first(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.transport.write(b"\x89\x02p0")  # bytes waiting in the transport...
        b.proto.sendPing(b"p1")  # ...so Autobahn's own write waits behind them
        self.assertGreater(b.transport._tempDataLen, 0)
        self.assertIsNone(b.member.express)
        a.send("m1")
        b.drain()
        got = b.frames()
        self.assertEqual(got[:2], [(0x9, b"p0"), (0x9, b"p1")])
        self.assertEqual([op for op, _ in got], [0x9, 0x9, 0x1])
        self.assertEqual(json.loads(got[2][1])["text"], "m1")
        a.send("m2")
        self.assertEqual(b.texts(), ["m2"])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_queued_direct_event_clears_it_until_the_turn_is_written(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.proto.onMessage(b"/ping p", False)
        self.assertIsNone(b.member.express)
        a.proto.onMessage(b"m1", False)
        self.clock.advance(0)
        self.assertEqual([(e["type"], e.get("text") or e.get("token")) for e in b.events()],
                         [("pong", "p"), ("message", "m1")])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_paused_output_holds_the_share_and_comes_back_in_order(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.chat.output.pauseProducing()
        self.assertIsNone(b.member.express)
        a.send("m1")
        a.send("m2")
        self.assertEqual(b.frames(), [])
        b.chat.output.resumeProducing()
        b.drain()
        a.send("m3")
        self.assertEqual(b.texts(), ["m1", "m2", "m3"])
        a.send("m4")
        self.assertIs(b.member.express, b.transport.socket)
        self.assertEqual(b.texts(), ["m4"])

    def test_what_a_socket_does_not_take_waits_and_later_shares_go_behind(self):
        line, b = self.connect("alice"), self.ws_connect("bob")
        sent = self.fill(line, b)
        line.send("tail")
        sent.append("tail")
        got = self.receive(b, lambda b: b.texts(), lambda got: len(got) >= len(sent))
        self.assertEqual(got, sent)
        line.send("after")
        self.assertEqual(b.texts(), ["after"])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_slow_consumer_is_cut_as_before(self):
        line, b, c = self.connect("alice"), self.ws_connect("bob"), self.ws_connect("carol")
        b.chat.output.limit = 100_000
        self.overflow(line, b, c)
        self.assertIsNone(b.chat.member)  # cut: left the hub
        self.assertEqual(self.hub.counts.slow_consumers, 1)
        self.assertIsNone(b.member.express)
        line.send("still")
        self.assertEqual(c.texts()[-1:], ["still"])

    def test_nothing_after_the_clients_close_frame(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.send_frame(0x8, struct.pack("!H", 1000))
        self.assertIsNone(b.member.express)
        a.send("after close")
        b.drain()
        got = b.frames()
        self.assertEqual([op for op, _ in got], [0x8])  # the close reply, and nothing more
        self.assertEqual(a.texts()[-1:], ["after close"])

    def test_quit_says_bye_then_closes(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.send("/quit")
        self.assertIsNone(b.member.express)
        a.send("later")
        b.drain()
        got = b.frames()
        self.assertEqual([op for op, _ in got], [0x1, 0x1, 0x8])
        self.assertEqual([json.loads(p)["type"] for _, p in got[:2]], ["quit", "bye"])
        self.assertEqual(a.texts()[-1:], ["later"])

    def test_shutdown_keeps_the_member_in_its_room_but_not_express(self):
        a, b = self.ws_connect("alice"), self.ws_connect("bob")
        b.chat.shutdown()
        self.assertIsNone(b.member.express)
        self.assertIn(b.member, list(self.hub.rooms.values())[0].members)
        a.send("after shutdown")
        b.drain()
        got = b.frames()
        self.assertEqual([op for op, _ in got], [0x1, 0x8])
        self.assertEqual(json.loads(got[0][1])["type"], "bye")


def frame(opcode, payload: bytes, fin=True, mask=True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if not mask:
        return head + bytes([n]) + payload
    key = os.urandom(4)
    return head + bytes([0x80 | n]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class InputTests(WebExpressTestCase):
    """What a client sends: whole text frames are taken without Autobahn's
    frame parser; anything else is Autobahn's, with its rules."""

    def setUp(self):
        super().setUp()
        self.a, self.b = self.ws_connect("alice"), self.ws_connect("bob")

    def test_many_frames_of_one_read_and_a_ping_among_them(self):
        a = self.a
        a.proto.dataReceived(masked(0x1, b"one") + masked(0x1, "zwei \u00e9".encode())
                             + frame(0x9, b"pp") + masked(0x1, b"three"))
        self.clock.advance(0)
        a.drain()
        got = a.frames()
        self.assertEqual(got[0], (0xA, b"pp"))  # the pong, written at once
        self.assertEqual([json.loads(p)["text"] for _, p in got[1:]],
                         ["one", "zwei \u00e9", "three"])
        self.assertEqual(self.b.texts(), ["one", "zwei \u00e9", "three"])

    def test_a_frame_split_over_reads(self):
        data = masked(0x1, b"x" * 300) + masked(0x1, b"next")
        for cut in (1, 3, 150, len(data) - 2):
            self.a.proto.dataReceived(data[:cut])
            self.a.proto.dataReceived(data[cut:])
            self.clock.advance(0)
            self.assertEqual(self.b.texts(), ["x" * 300, "next"])

    def test_a_fragmented_message(self):
        self.a.proto.dataReceived(frame(0x1, b"frag", fin=False) + frame(0x0, b"ment")
                                  + masked(0x1, b"whole"))
        self.clock.advance(0)
        self.assertEqual(self.b.texts(), ["fragment", "whole"])

    def test_invalid_utf8_fails_the_connection(self):
        self.a.proto.dataReceived(masked(0x1, b"ok") + masked(0x1, b"bad \xff")
                                  + masked(0x1, b"never"))
        self.clock.advance(0)
        self.a.drain()
        got = self.a.frames()
        self.assertEqual(got[-1][0], 0x8)
        self.assertEqual(struct.unpack("!H", got[-1][1][:2])[0], 1007)
        self.assertEqual(self.b.texts(), ["ok"])

    def test_an_unmasked_frame_fails_the_connection(self):
        messages = []
        self.patch(self.a.proto, "onMessage", lambda *args: messages.append(args))
        # (Read as if masked, its first four bytes and the four after it
        # would make a valid message: it must not be one.)
        self.a.proto.dataReceived(frame(0x1, b"plain text here", mask=False) + b"abcd")
        self.assertEqual(messages, [])
        self.clock.advance(0)
        self.a.drain()
        got = self.a.frames()
        self.assertEqual(got[-1][0], 0x8)
        self.assertEqual(struct.unpack("!H", got[-1][1][:2])[0], 1002)
        self.assertEqual(self.b.texts(), [])

    def test_over_the_bound_closes_with_1009(self):
        big = b"x" * (self.factory.max_line * 2 + 100)
        self.a.proto.dataReceived(masked(0x1, big))
        self.clock.advance(0)
        self.a.drain()
        got = self.a.frames()
        self.assertEqual(struct.unpack("!H", got[-1][1][:2])[0], 1009)
        self.assertEqual(self.b.texts(), [])
