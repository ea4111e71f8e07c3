"""ChatProtocol and ChatFactory over in-memory transports (no sockets, no reactor)."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory


class Conn:
    """One in-memory connection to a factory."""

    def __init__(self, factory, clock, port):
        self.clock = clock
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes):
        self.proto.dataReceived(data)
        self.clock.advance(0)  # run the end-of-turn flush

    def lines(self):
        """Lines written since the last call, decoded, without CRLF."""
        self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return [line for line in data.decode("utf-8").split("\r\n") if line]

    def events(self):
        return [json.loads(line) for line in self.lines()]


class ProtocolTestCase(SynchronousTestCase):
    max_line = 100

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.hub = Hub(motd="be nice", clock=self.clock.seconds)
        self.factory = ChatFactory(self.hub, clock=self.clock, max_line=self.max_line)
        self._port = 40000
        self.conns = []

    def connect(self, nick=None, json_mode=True):
        """A new connection, optionally in JSON mode and registered as ``nick``;
        every connection's output so far is drained."""
        self._port += 1
        c = Conn(self.factory, self.clock, self._port)
        self.conns.append(c)
        if json_mode:
            c.send(b"/mode json\n")
        if nick:
            c.send(f"/nick {nick}\n".encode())
        for each in self.conns:
            each.lines()
        return c


class RegistrationTests(ProtocolTestCase):
    def test_welcome_names_a_guest_nick(self):
        c = Conn(self.factory, self.clock, 1234)
        lines = c.lines()
        self.assertIn("you are guest1", lines[0])
        self.assertIn("-- be nice", lines)

    def test_json_mode_resends_welcome(self):
        c = Conn(self.factory, self.clock, 1234)
        c.lines()
        c.send(b"/mode json\r\n")
        (welcome,) = c.events()
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["nick"], "guest1")
        self.assertEqual(welcome["motd"], "be nice")

    def test_silent_connection_joins_after_grace(self):
        watcher = self.connect("watcher")
        lurker = self.connect()
        self.assertEqual(watcher.events(), [])
        self.clock.advance(3)
        self.assertEqual([e["type"] for e in lurker.events()], ["join", "names"])
        (join,) = watcher.events()
        self.assertEqual((join["type"], join["nick"]), ("join", "guest2"))

    def test_mode_and_nick_register_only_under_the_new_nick(self):
        watcher = self.connect("watcher")
        c = Conn(self.factory, self.clock, 99)
        c.lines()
        c.send(b"/mode json\n/ping\n/who\n/rooms\n/help\n")
        self.assertEqual(watcher.events(), [])
        c.send(b"/nick alice\n")
        self.assertEqual(
            [(e["type"], e.get("nick")) for e in watcher.events()], [("join", "alice")]
        )
        types = [e["type"] for e in c.events()]
        self.assertEqual(types[-3:], ["nick", "join", "names"])
        self.clock.advance(5)  # the grace timer must not join it again
        self.assertEqual(watcher.events(), [])

    def test_join_registers_into_that_room(self):
        c = self.connect()
        c.send(b"/join #Dev\n")
        events = c.events()
        self.assertEqual(events[0], {"type": "join", "room": "Dev", "nick": "guest1",
                                     "ts": events[0]["ts"]})
        # The first in a room nobody runs is its operator.
        self.assertEqual(events[1], {"type": "names", "room": "Dev", "nicks": ["guest1"],
                                     "ops": ["guest1"], "voiced": []})

    def test_names_follow_joins_renames_and_parts_in_join_order(self):
        a, b, c = self.connect("alice"), self.connect("bob"), self.connect("carol")
        b.send(b"/nick bee\n")
        a.send(b"/join elsewhere\n/part lobby\n")
        c.proto.connectionLost(_closed())
        d = self.connect()
        d.send(b"/nick dave\n")
        names = [e for e in d.events() if e["type"] == "names"][-1]
        self.assertEqual(names["nicks"], ["bee", "dave"])
        b.send(b"/who\n")
        self.assertEqual([e["nicks"] for e in b.events() if e["type"] == "names"],
                         [["bee", "dave"]])

    def test_disconnect_before_registration_is_silent(self):
        watcher = self.connect("watcher")
        c = self.connect()
        c.proto.connectionLost(_closed())
        self.clock.advance(5)
        self.assertEqual(watcher.events(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InputTests(ProtocolTestCase):
    def test_crlf_and_lf_both_end_lines(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"one\r\ntwo\nthr")
        a.send(b"ee\r\n")
        self.assertEqual([e["text"] for e in b.events() if e["type"] == "message"],
                         ["one", "two", "three"])

    def test_long_line_discarded_up_to_newline_connection_kept(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"x" * 150)
        a.send(b"y" * 150)
        a.send(b"z\nafter\n")
        errors = [e for e in a.events() if e["type"] == "error"]
        self.assertEqual([e["code"] for e in errors], ["line-too-long"])
        self.assertEqual([e["text"] for e in b.events() if e["type"] == "message"], ["after"])
        self.assertTrue(a.transport.connected)

    def test_long_complete_line_in_one_chunk(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"before\n" + b"x" * 101 + b"\r\nafter\n")
        self.assertEqual([e["code"] for e in a.events() if e["type"] == "error"],
                         ["line-too-long"])
        self.assertEqual([e["text"] for e in b.events() if e["type"] == "message"],
                         ["before", "after"])

    def test_line_of_exactly_max_line_bytes_with_crlf_is_accepted(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"m" * 100 + b"\r\n")
        self.assertEqual([e["text"] for e in b.events() if e["type"] == "message"], ["m" * 100])
        a.send(b"m" * 101 + b"\r\n")
        self.assertEqual([e["code"] for e in a.events() if e["type"] == "error"],
                         ["line-too-long"])

    def test_bad_utf8_goes_nowhere(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"caf\xe9\n")
        self.assertEqual([e["code"] for e in a.events()], ["bad-encoding"])
        self.assertEqual(b.events(), [])

    def test_controls_stripped_before_others_see_them(self):
        a, b = self.connect("alice"), self.connect("bob", json_mode=False)
        a.send(b"\x1b]0;pwned\x07hi\x00 \xc2\x9bthere\n")
        (line,) = b.lines()
        self.assertTrue(line.endswith("<alice> ]0;pwnedhi there"), line)

    def test_empty_lines_ignored(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"\n\r\n   \n")
        self.assertEqual(a.events(), [])
        self.assertEqual(b.events(), [])


class OutputTests(ProtocolTestCase):
    def test_one_write_per_connection_per_turn(self):
        a, b = self.connect("alice"), self.connect("bob")
        writes = []
        original = b.transport.write
        b.transport.write = lambda data: (writes.append(data), original(data))
        a.send(b"one\ntwo\nthree\n")
        self.assertEqual(len(writes), 1)
        self.assertEqual([e["text"] for e in b.events()], ["one", "two", "three"])

    def test_quit_says_bye_parts_and_closes(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send(b"/quit gone fishing\n")
        self.assertEqual(a.events()[-1], {"type": "bye", "reason": "goodbye"})
        self.assertTrue(a.transport.disconnecting)
        (part,) = b.events()
        self.assertEqual((part["nick"], part["reason"]), ("alice", "quit: gone fishing"))
        a.proto.connectionLost(_closed())
        self.assertEqual(b.events(), [])
        self.assertNotIn("alice", self.hub.members)

    def test_dropped_connection_parts_as_disconnected(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.proto.connectionLost(_closed())
        (part,) = b.events()
        self.assertEqual(part["reason"], "disconnected")


def _closed():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


class InternalErrorTests(ProtocolTestCase):
    def test_a_bug_is_logged_and_reported_without_dropping_anyone(self):
        a, b = self.connect("alice"), self.connect("bob")

        def broken(member, name=None):
            raise RuntimeError("boom")

        self.hub.who = broken
        a.send(b"/who\nstill talking\n")
        events = a.events()
        self.assertEqual(events[0]["code"], "internal")
        self.assertNotIn("boom", events[0]["message"])
        self.assertEqual([e["text"] for e in b.events()], ["still talking"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
