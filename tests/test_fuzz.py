"""Property test: random byte streams from several connections never raise,
and every connection (the attackers' included) receives only well-formed
lines: UTF-8, CRLF-terminated, valid JSON events in JSON mode, and no control
characters anywhere (no terminal escape injection)."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory

EVENT_TYPES = {"welcome", "join", "part", "quit", "nick", "names", "rooms", "message",
               "private", "error", "info", "pong", "bye", "topic", "mode", "kick", "invite",
               "flags", "bans", "history-end", "presence"}

# Pieces that steer random bytes into the interesting paths.
PIECES = [b"\n", b"\r\n", b"\r", b"/nick ", b"/join ", b"/msg ", b"/me ", b"/mode json\n",
          b"/mode text\n", b"/who\n", b"/rooms\n", b"/ping ", b"/help\n", b"/quit\n", b"//",
          b"\x1b[31m", b"\x1b]0;title\x07", b"\x00", b"\xc2\x9b", b"\x7f", b"\xff\xfe",
          "é".encode(), "Ａlice".encode(), b"\xe2\x82", b"a" * 70, b"obs", b"lobby", b"\t",
          # protocol v2: several rooms, topics, moderation
          b"/part ", b"/say ", b"/describe ", b"/topic ", b"/op ", b"/deop ", b"/voice ",
          b"/devoice ", b"/kick ", b"/ban ", b"/unban ", b"/invite ", b"/set ", b"/history ",
          b"dev ", b"lobby ", b"obsj ", b"obst ", b"guest3 ", b"moderated on\n",
          b"invite-only on\n", b"key k\n", b"limit 1\n", b"topic-lock off\n", b" -\n",
          b"address:10.0.0.1", b"/join dev\n", b"/join dev k\n", b"/op dev guest4\n",
          b"/kick lobby obst\n", b"/ban dev guest4\n"]

chunk = st.one_of(st.binary(max_size=40), st.sampled_from(PIECES),
                  st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join))
step = st.tuples(st.integers(0, 2), chunk,
                 st.sampled_from([0, 0, 0, 0.05, 0.5, 4.0, "lose"]))


def _controls(s):
    return [c for c in s if (ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def check_hub(test, hub):
    """The hub's invariants: each member's rooms and each room's members
    agree; present operators and voiced members are members; the nick index
    and each room's nick list match the members."""
    for key, member in hub.members.items():
        test.assertEqual(key, member.key)
        test.assertFalse(member.gone)
        for room in member.rooms:
            test.assertIs(hub.rooms.get(room.key), room)
            test.assertIn(member, room.members)
        test.assertTrue(member.active is None or member.active in member.rooms)
    for key, room in hub.rooms.items():
        test.assertEqual(key, room.key)
        test.assertEqual(room.nicks(), [m.nick for m in room.members])
        for member in room.members:
            test.assertIs(hub.members.get(member.key), member)
            test.assertIn(room, member.rooms)
        test.assertLessEqual(set(room.ops), set(room.members))
        test.assertLessEqual(set(room.voiced), set(room.members))
        test.assertEqual(set(room.ops), {m for m in room.members if hub.is_op(m, room)})
        test.assertTrue(room.members or key == hub.default_key)


class FuzzTests(SynchronousTestCase):
    def check_output(self, test, data, json_mode):
        if not data:
            return
        test.assertTrue(data.endswith(b"\r\n"), data[-80:])
        for raw in data.split(b"\r\n")[:-1]:
            line = raw.decode("utf-8")  # raises on invalid UTF-8
            if json_mode and line.startswith("{"):
                event = json.loads(line)
                test.assertIn(event["type"], EVENT_TYPES)
                for s in _strings(event):
                    test.assertEqual(_controls(s), [], line)
                test.assertNotEqual(event.get("code"), "internal", line)
            else:
                test.assertEqual(_controls(line), [], line)
                test.assertFalse(line.startswith("!! internal"), line)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(step, max_size=30))
    def test_random_streams(self, steps):
        clock = MemoryReactorClock()
        factory = ChatFactory(Hub(clock=clock.seconds), clock=clock, max_line=64,
                              rate=3, burst=6, max_backlog=1 << 20)

        def connect(port):
            addr = IPv4Address("TCP", "10.0.0.1", port)
            proto = factory.buildProtocol(addr)
            transport = StringTransport(peerAddress=addr)
            proto.makeConnection(transport)
            return proto, transport

        # Two well-behaved observers in the default room, one per mode.
        obs_json, obs_json_t = connect(1)
        obs_json.dataReceived(b"/mode json\r\n/nick obsj\r\n")
        obs_text, obs_text_t = connect(2)
        obs_text.dataReceived(b"/nick obst\r\n")
        attackers = [connect(10 + i) for i in range(3)]
        lost = set()
        clock.advance(0)
        for who, data, then in steps:
            proto, transport = attackers[who]
            if who not in lost:
                proto.dataReceived(data)
            if then == "lose" and who not in lost:
                lost.add(who)
                proto.connectionLost(Failure(ConnectionDone()))
            elif then != "lose":
                clock.advance(then)
            clock.advance(0)
            check_hub(self, factory.hub)
        clock.advance(5)
        for who in range(3):  # half-lines still buffered at disconnect
            if who not in lost:
                attackers[who][0].connectionLost(Failure(ConnectionDone()))
        clock.advance(0)

        self.check_output(self, obs_json_t.value(), True)
        self.check_output(self, obs_text_t.value(), False)
        self.assertIsNotNone(obs_json.member)
        self.assertIsNotNone(obs_text.member)
        for proto, transport in attackers:
            # An attacker's own stream may switch modes midway: check each
            # line by its shape.
            self.check_output(self, transport.value(), True)
        self.assertEqual(factory.turn.limits.total, 2)
        self.assertEqual(sorted(factory.hub.members), ["obsj", "obst"])
