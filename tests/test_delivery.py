"""The delivery layer on its own: one Turn shared by every face, and the Outlet
that any face (not only the line protocol) writes through.

Driven by StringTransport and a Clock; the "other face" here is a bare
object with the two hooks an Outlet calls, standing in for the IRC and
WebSocket faces.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import events
from twisted_chat.delivery.outlet import Outlet
from twisted_chat.delivery.turn import Turn
from twisted_chat.events import JSON, TEXT
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory


class Face:
    """The least a face gives its outlet: the two hooks, and a member."""

    def __init__(self, turn, hub, host="10.0.0.9", mode=JSON, limit=1 << 20):
        self.calls = []
        self.transport = StringTransport()
        self.outlet = Outlet(turn, self.transport, self, mode)
        self.refused = turn.admit(self.outlet, host)
        if self.refused is None:
            self.outlet.open(limit)
            self.member = self.outlet.member = hub.connect(self.outlet.deliver,
                                                           sink=self.outlet)

    def outlet_overflowed(self):
        self.calls.append("overflowed")

    def outlet_shutdown(self):
        self.calls.append("shutdown")

    def written(self):
        data = self.transport.value()
        self.transport.clear()
        return data


class Harness(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(clock=self.clock.seconds)
        self.turn = Turn(self.hub, self.clock, max_clients=3, max_per_ip=0)
        # Two faces' factories on the one turn (a second line factory stands
        # in for the IRC or WebSocket face).
        self.line = ChatFactory(self.hub, turn=self.turn)
        self.other = ChatFactory(self.hub, turn=self.turn)
        self.port = 40000

    def connect(self, factory):
        self.port += 1
        addr = IPv4Address("TCP", "10.0.0.1", self.port)
        proto = factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        self.clock.advance(0)
        return proto, transport


class TurnTests(Harness):
    def test_the_hub_is_scheduled_by_the_one_turn(self):
        self.assertEqual(self.hub.schedule, self.turn.dirty_room)
        self.assertIs(self.line.turn, self.other.turn)
        self.assertRaises(ValueError, Turn, self.hub, self.clock)

    def test_limits_belong_to_the_turn_when_it_is_given(self):
        self.assertRaises(TypeError, ChatFactory, self.hub, turn=self.turn, max_clients=5)

    def test_max_clients_counts_every_face(self):
        a, _ = self.connect(self.line)
        b, _ = self.connect(self.other)
        c, _ = self.connect(self.line)
        d, d_t = self.connect(self.other)
        self.assertEqual(d_t.value().split(b":")[0], b"!! server-full")
        self.assertTrue(d_t.disconnecting)
        self.assertEqual(self.turn.limits.total, 3)
        self.assertEqual(len(self.turn.connections), 3)
        c.connectionLost(Failure(ConnectionDone()))
        d.connectionLost(Failure(ConnectionDone()))  # a refused connection was never counted
        self.assertEqual(self.turn.limits.total, 2)
        e, e_t = self.connect(self.other)
        self.assertIn(b"welcome", e_t.value())
        self.assertEqual(self.turn.limits.total, 3)

    def test_one_flush_serves_the_connections_of_every_face(self):
        a, a_t = self.connect(self.line)
        b, b_t = self.connect(self.other)
        self.clock.advance(3)  # both registered in the default room
        a_t.clear(), b_t.clear()
        a.dataReceived(b"hello\n")
        self.assertEqual(b_t.value(), b"")  # not before the end of the turn
        self.clock.advance(0)
        self.assertIn(b"<guest1> hello", b_t.value())

    def test_pause_and_shutdown_reach_every_face(self):
        (a, a_t), (b, b_t) = self.connect(self.line), self.connect(self.other)
        self.turn.pause_input()
        self.assertEqual([a_t.producerState, b_t.producerState], ["paused", "paused"])
        self.turn.resume_input()
        self.assertEqual([a_t.producerState, b_t.producerState], ["producing", "producing"])
        d = self.turn.shutdown(timeout=5)
        fired = []
        d.addCallback(fired.append)
        for t in (a_t, b_t):
            self.assertTrue(t.value().endswith(b"-- bye: server shutting down\r\n"))
            self.assertTrue(t.disconnecting)
        a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fired, [])
        b.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fired, [None])
        self.assertEqual(self.turn.limits.total, 0)


class OutletTests(Harness):
    def test_any_face_gets_one_write_per_turn_in_its_mode(self):
        face = Face(self.turn, self.hub, mode=TEXT)
        face.outlet.deliver(events.info("one"))
        face.outlet.deliver(events.info("two"))
        self.assertEqual(face.written(), b"")
        self.clock.advance(0)
        self.assertEqual(face.written(), b"-- one\r\n-- two\r\n")
        face.outlet.set_mode(JSON)
        face.outlet.deliver(events.info("three"))
        self.clock.advance(0)
        self.assertEqual(face.written(), b'{"type":"info","message":"three"}\r\n')

    def test_a_face_without_the_line_protocol_joins_rooms_and_gets_shares(self):
        face = Face(self.turn, self.hub, mode=TEXT)
        proto, _ = self.connect(self.line)
        self.hub.register(face.member)
        self.clock.advance(3)
        face.written()
        proto.dataReceived(b"hi all\n")
        self.clock.advance(0)
        self.assertIn(b"<guest2> hi all\r\n", face.written())

    def test_a_reply_the_face_renders_goes_behind_the_room_events_owed(self):
        face = Face(self.turn, self.hub, mode=TEXT)
        proto, _ = self.connect(self.line)
        self.hub.register(face.member)
        self.clock.advance(3)
        face.written()
        proto.dataReceived(b"first\n")  # the room's batch holds it until the turn ends
        face.outlet.queue(b"REPLY\r\n")
        self.assertIsNone(face.member.express)
        self.clock.advance(0)
        data = face.written()
        self.assertTrue(data.endswith(b"<guest2> first\r\nREPLY\r\n"), data)
        proto.dataReceived(b"second\n")
        self.clock.advance(0)
        self.assertTrue(face.written().endswith(b"<guest2> second\r\n"))

    def test_overflow_tells_the_face_and_says_bye(self):
        face = Face(self.turn, self.hub, mode=TEXT, limit=10)
        face.outlet.output.pauseProducing()
        face.outlet.deliver(events.info("x" * 20))
        self.clock.advance(0)
        self.assertEqual(face.calls, ["overflowed"])
        self.assertEqual(face.written(), b"-- bye: too slow: output backlog full\r\n")
        self.assertTrue(face.transport.disconnecting)

    def test_shutdown_once_and_refusal(self):
        face = Face(self.turn, self.hub, mode=TEXT)
        face.written()
        face.outlet.shutdown("going")
        face.outlet.shutdown("again")
        self.assertEqual(face.calls, ["shutdown"])
        self.assertEqual(face.written(), b"-- bye: going\r\n")
        full = [Face(self.turn, self.hub) for _ in range(3)][-1]
        self.assertEqual(full.refused, "server-full")
