"""Renderings as a registry keyed by mode (twisted_chat.delivery.render).

A face's own renderings are registered here the way a face would: a framed
one whose bytes are the same for every recipient, and one where some events
name their recipient. Connections of the line face (StringTransport, Clock)
are switched to them through their outlet.
"""

import json
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import events
from twisted_chat.delivery import render
from twisted_chat.delivery.outlet import Outlet
from twisted_chat.delivery.render import register_rendering
from twisted_chat.events import JSON, TEXT, Event
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory

rendered = []  # (mode, event type) of every call of the test renderings


def _frame(event, recipient=None):
    """A length-prefixed JSON frame (a stand-in for a WebSocket frame)."""
    rendered.append(("test-frame", event.type))
    body = json.dumps(event.to_dict(), separators=(",", ":")).encode()
    return struct.pack(">H", len(body)) + body


def _addressed(event, recipient=None):
    """Lines that name their recipient for messages (as IRC numerics do)."""
    rendered.append(("test-addressed", event.type))
    if recipient is not None:
        return f"{recipient.member.nick}: {event.type} {event.fields.get('text', '')}\r\n".encode()
    return f"* {event.type}\r\n".encode()


def _addressed_personal(event):
    return event.type == "message"


FRAME = register_rendering("test-frame", _frame)
ADDRESSED = register_rendering("test-addressed", _addressed, personal=_addressed_personal)


def frames(data):
    out = []
    while data:
        (n,) = struct.unpack(">H", data[:2])
        out.append(json.loads(data[2:2 + n]))
        data = data[2 + n:]
    return out


class RegistryTests(SynchronousTestCase):
    def setUp(self):
        del rendered[:]

    def test_the_line_renderings_are_registered(self):
        self.assertTrue(render.rendering(TEXT).shared)
        self.assertTrue(render.rendering(JSON).shared)
        self.assertEqual(events.info("x").encode(TEXT), b"-- x\r\n")
        self.assertEqual(events.info("x").encode(JSON), b'{"type":"info","message":"x"}\r\n')

    def test_an_unknown_mode_is_an_error_not_text(self):
        self.assertRaises(ValueError, events.info("x").encode, "no-such-mode")

    def test_a_mode_registers_once(self):
        self.assertIs(register_rendering("test-frame", _frame), FRAME)
        self.assertRaises(ValueError, register_rendering, "test-frame", _addressed)
        self.assertRaises(ValueError, register_rendering, TEXT, _frame)

    def test_rendered_once_per_rendering(self):
        event = events.info("hello")
        for _ in range(3):
            self.assertEqual(frames(event.encode("test-frame")),
                             [{"type": "info", "message": "hello"}])
            event.encode(TEXT)
        self.assertEqual(rendered, [("test-frame", "info")])

    def test_personal_events_are_rendered_per_recipient_and_not_cached(self):
        hub = Hub()
        alice, bob = (Outlet(None, None, None, TEXT) for _ in range(2))
        alice.member, bob.member = hub.connect(alice.deliver), hub.connect(bob.deliver)
        message = Event("message", {"text": "hi"})
        self.assertTrue(render.is_personal(message, "test-addressed"))
        self.assertEqual(message.encode("test-addressed", alice), b"guest1: message hi\r\n")
        self.assertEqual(message.encode("test-addressed", bob), b"guest2: message hi\r\n")
        self.assertEqual(message.encode("test-addressed", alice), b"guest1: message hi\r\n")
        self.assertEqual(len(rendered), 3)
        info = events.info("x")  # not personal there: rendered once, for nobody
        self.assertFalse(render.is_personal(info, "test-addressed"))
        self.assertEqual(info.encode("test-addressed", alice), b"* info\r\n")
        self.assertEqual(info.encode("test-addressed", bob), b"* info\r\n")
        self.assertEqual(len(rendered), 4)


class OutletModeTests(SynchronousTestCase):
    def setUp(self):
        del rendered[:]
        self.clock = Clock()
        self.hub = Hub(clock=self.clock.seconds)
        self.factory = ChatFactory(self.hub, clock=self.clock)
        self.port = 40000

    def connect(self, nick, mode):
        self.port += 1
        addr = IPv4Address("TCP", "127.0.0.1", self.port)
        proto = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        proto.dataReceived(f"/nick {nick}\n".encode())
        self.clock.advance(0)
        proto.outlet.set_mode(mode)
        transport.clear()
        return proto, transport

    def test_an_unknown_mode_is_refused(self):
        proto, _ = self.connect("alice", TEXT)
        self.assertRaises(ValueError, proto.outlet.set_mode, "no-such-mode")
        self.assertEqual(proto.mode, TEXT)

    def test_a_room_shares_one_rendering_per_mode(self):
        a, a_t = self.connect("alice", TEXT)
        framed = [self.connect(f"f{i}", "test-frame") for i in range(3)]
        for _, t in framed:
            t.clear()
        del rendered[:]
        a.dataReceived(b"hello\n")
        self.clock.advance(0)
        for _, t in framed:
            self.assertEqual([(e["type"], e.get("text")) for e in frames(t.value())],
                             [("message", "hello")])
        self.assertEqual(rendered, [("test-frame", "message")])

    def test_personal_events_leave_the_common_share_for_one_each(self):
        a, a_t = self.connect("alice", TEXT)
        (b, b_t), (c, c_t) = self.connect("bob", "test-addressed"), self.connect("carol", TEXT)
        for t in (a_t, b_t, c_t):
            t.clear()
        del rendered[:]
        a.dataReceived(b"hello\n")
        c.dataReceived(b"/me waves\n")
        self.clock.advance(0)
        self.assertEqual(b_t.value(), b"bob: message hello\r\nbob: message waves\r\n")
        # The text members' lines as ever (a text sender gets no echo).
        self.assertRegex(c_t.value(), rb"^\[\d\d:\d\d\] #lobby <alice> hello\r\n$")
        self.assertRegex(a_t.value(), rb"^\[\d\d:\d\d\] #lobby \* carol waves\r\n$")
        self.assertEqual(rendered, [("test-addressed", "message")] * 2)
        # Events that are not personal there still come out once, for everybody.
        d, d_t = self.connect("dave", "test-addressed")
        self.assertNotIn(b"dave", b_t.value())
        b_t.clear()
        d.dataReceived(b"/nick dan\n")
        self.clock.advance(0)
        self.assertEqual(b_t.value(), b"* nick\r\n")
