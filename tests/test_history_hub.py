"""The hub and protocol with a real SQLite store whose writer the test drives:
ordering around the group commit, replay on join, /history, failures."""

import json
import os
import shutil
import tempfile

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.commands import parse
from twisted_chat.errors import ChatError
from twisted_chat.history import sqlite as store_module
from twisted_chat.history.sqlite import SQLiteHistory
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory
from twisted_chat.replay import RecentMessages

from .test_history_store import ManualRunner
from .test_protocol import Conn


class HistoryHubTestCase(SynchronousTestCase):
    replay = 50

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-hub-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.runner = ManualRunner()
        self.store = SQLiteHistory(os.path.join(self.dir, "chat.sqlite"), clock=self.clock,
                                   runner=self.runner)
        self.store.startService()
        self.addCleanup(self._stop)
        self.hub = Hub(clock=self.clock.seconds, history=self.store, replay=self.replay)
        self.factory = ChatFactory(self.hub, clock=self.clock, max_line=1000)
        self._port = 50000
        self.conns = []

    def _stop(self):
        d = self.store.stopService()
        self.runner.run_all()
        self.successResultOf(d)

    def connect(self, nick, json_mode=True):
        self._port += 1
        c = Conn(self.factory, self.clock, self._port)
        self.conns.append(c)
        if json_mode:
            c.send(b"/mode json\n")
        c.send(f"/nick {nick}\n".encode())
        self.commit()
        for each in self.conns:
            each.lines()
        return c

    def commit(self):
        """Let the writer thread do everything queued, then end the turn."""
        self.clock.advance(0)
        while self.runner.jobs:
            self.runner.run_all()
            self.clock.advance(0)

    def say(self, conn, *texts):
        conn.send(b"".join(t.encode() + b"\n" for t in texts))


class OrderTests(HistoryHubTestCase):
    def test_nothing_goes_out_before_the_commit(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.say(alice, "hello")
        self.assertEqual(bob.events(), [])
        self.assertEqual(alice.events(), [])
        self.commit()
        (echo,) = alice.events()
        (got,) = bob.events()
        self.assertEqual(echo, got)
        self.assertEqual(got["id"], 1)

    def test_other_events_wait_behind_pending_messages(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        bob.send(b"/me waves\n/msg alice psst\n/nick robert\n")
        self.commit()
        self.assertEqual([(e["type"], e.get("text")) for e in alice.events()],
                         [("message", "waves"), ("private", "psst"), ("nick", None)])

    def test_pong_follows_the_echo(self):
        alice = self.connect("alice")
        alice.send(b"one\n/ping sync\n")
        self.assertEqual(alice.events(), [])  # the pong waits too
        self.commit()
        self.assertEqual([e["type"] for e in alice.events()], ["message", "pong"])

    def test_message_reaches_the_room_as_it_was_when_accepted(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.say(alice, "before carol")
        carol = self.connect_pending("carol")
        bob.send(b"/part\n")
        self.commit()
        bob_events = [(e["type"], e.get("text") or e.get("reason")) for e in bob.events()]
        # bob got the message said while he was there, then carol coming,
        # then his own part.
        self.assertEqual(bob_events[:3], [("message", "before carol"), ("join", None),
                                          ("part", "left")])
        # carol: her join and names, then the message in her join replay
        # (it was accepted before she came), once, then bob leaving.
        events = carol.events()
        kinds = [(e["type"], e.get("text"), e.get("history")) for e in events]
        self.assertEqual(kinds[:2], [("nick", None, None), ("join", None, None)])
        self.assertIn(("message", "before carol", True), kinds)
        self.assertEqual([k for k in kinds if k[0] == "message"],
                         [("message", "before carol", True)])
        self.assertEqual(kinds[-1][0], "part")

    def connect_pending(self, nick):
        """Connect without letting the store commit meanwhile."""
        self._port += 1
        c = Conn(self.factory, self.clock, self._port)
        self.conns.append(c)
        c.send(b"/mode json\n")
        c.lines()  # the welcomes
        c.send(f"/nick {nick}\n".encode())
        return c

    def test_sender_who_disconnects_meanwhile_gets_nothing_and_the_room_gets_it(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.say(alice, "parting words")
        alice.proto.connectionLost(Failure(ConnectionDone()))
        alice.lines()
        self.commit()
        self.assertEqual(alice.lines(), [])
        events = bob.events()
        self.assertEqual([(e["type"], e.get("text")) for e in events],
                         [("message", "parting words"), ("quit", None)])

    def test_sender_who_changes_room_still_gets_its_acknowledgement(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.say(alice, "bye lobby")
        alice.send(b"/join dev\n")
        self.commit()
        types = [(e["type"], e.get("text")) for e in alice.events()]
        self.assertEqual(types[0], ("message", "bye lobby"))
        self.assertEqual(bob.events()[0]["text"], "bye lobby")

    def test_store_failure_tells_the_sender_and_nobody_else(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.store._conn.execute("DROP TABLE messages")  # break the next write
        self.say(alice, "lost")
        self.commit()
        self.assertEqual([(e["type"], e.get("code")) for e in alice.events()],
                         [("error", "not-stored")])
        self.assertEqual(bob.events(), [])


class ReplayTests(HistoryHubTestCase):
    replay = 3

    def test_joiner_gets_the_last_n_marked_then_live(self):
        alice = self.connect("alice")
        self.say(alice, *(f"m{i}" for i in range(5)))
        self.commit()
        bob = self.connect_pending("bob")
        self.say(alice, "live one")
        self.commit()
        events = bob.events()
        self.assertEqual([e["type"] for e in events],
                         ["nick", "join", "names", "message", "message", "message",
                          "history-end", "message"])
        self.assertEqual([e["text"] for e in events[3:6]], ["m2", "m3", "m4"])
        self.assertTrue(all(e["history"] for e in events[3:6]))
        self.assertEqual(events[6], {"type": "history-end", "room": "lobby", "count": 3,
                                     "limit": 3, "oldest": events[3]["id"]})
        self.assertEqual(events[7]["text"], "live one")
        self.assertNotIn("history", events[7])

    connect_pending = OrderTests.connect_pending

    def test_replay_comes_first_and_nothing_is_doubled(self):
        self.hub.recent = RecentMessages(0)  # every replay is read from the store
        alice = self.connect("alice")
        self.say(alice, "old")
        self.commit()
        bob = self.connect_pending("bob")  # its read is queued now
        self.say(alice, "new")  # the write of "new" queues behind the read
        self.runner.run_one()  # the read: only "old"
        self.assertEqual([(e["type"], e.get("text")) for e in bob.events()],
                         [("nick", None), ("join", None), ("names", None),
                          ("message", "old"), ("history-end", None)])
        self.commit()
        self.assertEqual([(e["text"], e.get("history")) for e in bob.events()],
                         [("new", None)])

    def test_joiners_after_the_first_share_the_replay_without_a_read(self):
        alice = self.connect("alice")  # the first join reads the (empty) room
        self.say(alice, "one", "two")
        self.commit()
        bob = self.connect_pending("bob")
        self.assertEqual(self.runner.jobs, [])  # no read: served from memory
        carol = self.connect_pending("carol")
        self.clock.advance(0)
        replays = []
        for conn in (bob, carol):
            events = [e for e in conn.events() if e["type"] in ("message", "history-end")]
            self.assertEqual([(e["type"], e.get("text"), e.get("history")) for e in events],
                             [("message", "one", True), ("message", "two", True),
                              ("history-end", None, None)])
            replays.append(events)
        self.assertEqual(replays[0], replays[1])
        # What the store would have said, and the same events for both.
        self.assertEqual(replays[0][:2], self.read_replay())
        shared = self.hub.recent.replay(self.hub.rooms["lobby"])
        self.assertIs(shared, self.hub.recent.replay(self.hub.rooms["lobby"]))

    def read_replay(self):
        """The lobby's replay as the store gives it, rendered like the hub's."""
        from twisted_chat.replay import history_event
        d = self.store.before("lobby", 1 << 30, 50)
        self.runner.run_all()
        return [json.loads(history_event("lobby", r.id, r.t, r.nick, r.text, r.action)
                           .encode("json")) for r in self.successResultOf(d)]

    def test_a_message_said_before_the_first_read_is_answered_is_in_the_next_replay(self):
        alice = self.connect_pending("alice")  # the first read is queued
        self.say(alice, "during")
        self.commit()
        bob = self.connect_pending("bob")
        self.assertEqual(self.runner.jobs, [])
        self.assertEqual([(e.get("text"), e.get("history")) for e in bob.events()
                          if e["type"] == "message"], [("during", True)])

    def test_one_batch_around_a_join_reaches_the_joiner_once(self):
        alice = self.connect("alice")
        bob = Conn(self.factory, self.clock, 2)
        bob.send(b"/mode json\n")
        bob.lines()
        # One reactor turn: m1, bob joins, m2. One batch holds both messages;
        # bob's read runs after the batch, so the database holds m2 too, but
        # m2 reaches bob live (he was in the room when it was accepted): the
        # replay stops at m1, where his live stream starts. He gets m2 once.
        alice.proto.dataReceived(b"m1\n")
        bob.proto.dataReceived(b"/nick bob\n")
        alice.proto.dataReceived(b"m2\n")
        self.commit()
        messages = [(e["text"], e.get("history")) for e in bob.events()
                    if e["type"] == "message"]
        self.assertEqual(messages, [("m1", True), ("m2", None)])

    def test_moving_on_while_a_replay_is_awaited_keeps_the_stream_in_order(self):
        alice = self.connect("alice")
        alice.send(b"/join dev\n")
        self.say(alice, "in dev")
        self.say(alice, "more")
        self.commit()
        alice.send(b"/join lobby\n")
        self.say(alice, "in lobby")
        self.commit()
        bob = Conn(self.factory, self.clock, 3)
        bob.send(b"/mode json\n")
        bob.lines()
        bob.send(b"/nick bob\n/part\n/join dev\n/ping x\n")  # the lobby read is still queued
        self.commit()
        got = [(e["type"], e.get("room"), e.get("text")) for e in bob.events()]
        self.assertEqual(got, [
            ("nick", None, None), ("join", "lobby", None), ("names", "lobby", None),
            ("message", "lobby", "in lobby"), ("history-end", "lobby", None),
            ("part", "lobby", None), ("join", "dev", None), ("names", "dev", None),
            ("message", "dev", "in dev"), ("message", "dev", "more"),
            ("history-end", "dev", None), ("pong", None, None)])

    def test_empty_room_replays_nothing(self):
        bob = self.connect_pending("bob")
        self.commit()
        self.assertEqual([e["type"] for e in bob.events()], ["nick", "join", "names"])

    def test_text_mode_dated_lines_and_separator(self):
        alice = self.connect("alice")
        self.say(alice, "hello", "/me waves")
        self.commit()
        carol = Conn(self.factory, self.clock, 1)  # text mode
        carol.send(b"/nick carol\n")
        self.commit()
        lines = carol.lines()
        self.assertRegex(lines[-3], r"^\[\d{4}-\d\d-\d\d \d\d:\d\d\] #lobby <alice> hello$")
        self.assertRegex(lines[-2], r"^\[\d{4}-\d\d-\d\d \d\d:\d\d\] #lobby \* alice waves$")
        self.assertEqual(lines[-1], "-- end of history: 2 messages in #lobby --")

    def test_history_command_pages_and_caps(self):
        alice = self.connect("alice")
        self.say(alice, *(f"m{i}" for i in range(10)))
        self.commit()
        alice.lines()
        alice.send(b"/history lobby 4\n")
        self.commit()
        events = alice.events()
        self.assertEqual([e["text"] for e in events[:-1]], ["m6", "m7", "m8", "m9"])
        oldest = events[-1]["oldest"]
        alice.send(f"/history lobby before {oldest} 100\n".encode())
        self.commit()
        events = alice.events()
        self.assertEqual([e["text"] for e in events[:-1]], [f"m{i}" for i in range(6)])
        self.assertEqual(events[-1]["count"], 6)
        self.assertEqual(events[-1]["limit"], 100)
        alice.send(f"/history lobby before {events[0]['id']}\n".encode())
        self.commit()
        self.assertEqual(alice.events(), [{"type": "history-end", "room": "lobby",
                                           "count": 0, "limit": 3}])
        alice.send(b"/history lobby 100000\n")
        self.commit()
        self.assertEqual(alice.events()[-1]["limit"], 500)

    def test_private_messages_are_never_replayed(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.send(b"/msg bob secret\n")
        self.commit()
        carol = self.connect_pending("carol")
        self.commit()
        carol.send(b"/history\n")
        self.commit()
        self.assertNotIn("secret", " ".join(carol.lines()))


class HistoryCommandParseTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(parse("/history")[3:6], (None, None, None))
        self.assertEqual(parse("/history dev")[3:6], (None, None, "dev"))
        self.assertEqual(parse("/history dev 20")[3:6], (20, None, "dev"))
        self.assertEqual(parse("/HISTORY dev before 7")[3:6], (None, 7, "dev"))
        self.assertEqual(parse("/history dev BEFORE 7 9")[3:6], (9, 7, "dev"))

    def test_bad_forms_are_usage_errors(self):
        for line in ("/history dev 0", "/history dev -1", "/history dev x",
                     "/history dev 1 2", "/history dev before", "/history dev before x",
                     "/history dev before 3 4 5", "/history dev ３",
                     "/history dev " + "9" * 40, "/history dev before 0"):
            e = self.assertRaises(ChatError, parse, line)
            self.assertEqual(e.code, "usage", line)


class InputPressureTests(HistoryHubTestCase):
    def test_pause_and_resume_reading_every_connection(self):
        alice = self.connect("alice")
        self.factory.turn.pause_input()
        self.assertEqual(alice.transport.producerState, "paused")
        late = Conn(self.factory, self.clock, 9)  # connects while paused
        self.assertEqual(late.transport.producerState, "paused")
        self.factory.turn.resume_input()
        self.assertEqual([c.transport.producerState for c in (alice, late)],
                         ["producing", "producing"])

    def test_lines_already_read_wait_while_input_is_paused(self):
        # The store pauses input in the middle of a read: the rest of that
        # read stays raw, handled only when input resumes, in order.
        alice, bob = self.connect("alice"), self.connect("bob")
        self.store.on_pressure(self.factory.turn.pause_input, self.factory.turn.resume_input)
        self.patch(store_module, "HIGH_WATER", 1)  # the first line pauses input
        self.say(alice, "one", "two", "three")
        self.assertEqual(self.store._waiting, 1)
        self.assertTrue(alice.proto.paused)
        self.patch(store_module, "HIGH_WATER", 1 << 20)
        self.commit()  # "one" written: resumed; "two" and "three" follow
        self.assertEqual([e.get("text") for e in bob.events()], ["one", "two", "three"])
        self.assertFalse(alice.proto.paused)
        self.assertEqual(alice.transport.producerState, "producing")
