"""Room fan-out coalesced per turn: one write per member per turn, causal order kept.

Unit tests drive ChatProtocol/ChatFactory over StringTransport and a Clock; the
integration tests check the same promises against a real ``twistd chat``.
"""

import json
import time

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.events import Event
from twisted_chat.hub import Hub

from .test_protocol import ProtocolTestCase
from .test_server import ServerTestCase


class CountingWrites:
    """Counts transport.write calls on a StringTransport."""

    def __init__(self, conn):
        self.calls = 0
        original = conn.transport.write

        def write(data):
            self.calls += 1
            original(data)

        conn.transport.write = write


def types(events):
    return [(e["type"], e.get("text") or e.get("token") or e.get("nick")) for e in events]


class CoalescingTests(ProtocolTestCase):
    def same_turn(self, *pairs):
        """Feed each (conn, bytes) in one reactor turn, then run the flush."""
        for conn, data in pairs:
            conn.proto.dataReceived(data)
        self.clock.advance(0)

    def test_one_write_per_member_per_turn_in_order(self):
        a, b = self.connect("alice"), self.connect("bob")
        watchers = [self.connect(f"w{i}") for i in range(5)]
        counters = [CountingWrites(w) for w in watchers]
        self.same_turn((a, b"one\ntwo\n"), (b, b"three\n"), (a, b"four\n"))
        for w, counter in zip(watchers, counters):
            self.assertEqual(counter.calls, 1)
            self.assertEqual([(e["nick"], e["text"]) for e in w.events()],
                             [("alice", "one"), ("alice", "two"), ("bob", "three"),
                              ("alice", "four")])

    def test_a_member_of_several_rooms_gets_their_events_in_the_hubs_order(self):
        a, b, c = self.connect("alice"), self.connect("bob"), self.connect("carol")
        for conn in (a, b, c):
            conn.send(b"/join dev\n")
            conn.events()
        c.send(b"/part lobby\n")
        self.clock.advance(0)
        for conn in (a, b, c):
            conn.events()
        # Interleaved across two rooms in one turn; bob is in both, and also
        # gets a direct event (pong) in the middle.
        self.same_turn((c, b"/say dev d1\n"), (a, b"/say lobby l1\n"), (b, b"/ping p\n"),
                       (c, b"/say dev d2\n"), (a, b"/say lobby l2\n"), (c, b"/say dev d3\n"))
        self.assertEqual(types(b.events()), [("message", "d1"), ("message", "l1"),
                                             ("pong", "p"), ("message", "d2"),
                                             ("message", "l2"), ("message", "d3")])
        # Without a direct event in between: merged at the flush, one write.
        a.events(), c.events()
        counter = CountingWrites(b)
        self.same_turn((c, b"/say dev e1\n"), (a, b"/say lobby f1\n"), (c, b"/say dev e2\n"))
        self.assertEqual(types(b.events()), [("message", "e1"), ("message", "f1"),
                                             ("message", "e2")])
        self.assertEqual(counter.calls, 1)
        self.assertEqual(types(c.events()), [("message", "e1"), ("message", "e2")])

    def test_members_in_the_same_mode_share_one_blob(self):
        a = self.connect("alice")
        ws = [self.connect(f"w{i}") for i in range(3)]
        pushed = []
        for w in ws:
            original = w.proto.output.write
            w.proto.output.write = lambda data, original=original: (pushed.append(data),
                                                                    original(data))
        self.same_turn((a, b"hi\nthere\n"))
        self.assertEqual(len(pushed), 3)
        self.assertTrue(all(p is pushed[0] for p in pushed))

    def test_text_sender_gets_no_echo_json_sender_does(self):
        t = self.connect("tom", json_mode=False)
        j = self.connect("jane")
        w = self.connect("will")
        t.lines(), j.lines(), w.lines()
        self.same_turn((t, b"from tom\n"), (j, b"from jane\n"), (t, b"tom again\n"))
        self.assertEqual([line.split("> ", 1)[1] for line in t.lines()], ["from jane"])
        self.assertEqual([e["text"] for e in j.events()],
                         ["from tom", "from jane", "tom again"])
        self.assertEqual([e["text"] for e in w.events()],
                         ["from tom", "from jane", "tom again"])

    def test_direct_events_keep_their_place(self):
        a, b = self.connect("alice"), self.connect("bob")
        self.same_turn((a, b"m1\n"), (b, b"/ping p\n"), (a, b"m2\n"),
                       (a, b"/msg bob psst\n"), (a, b"m3\n"))
        self.assertEqual(types(b.events()), [
            ("message", "m1"), ("pong", "p"), ("message", "m2"), ("private", "psst"),
            ("message", "m3")])
        self.assertEqual(types(a.events()), [
            ("message", "m1"), ("message", "m2"), ("private", "psst"), ("message", "m3")])

    def test_a_direct_event_before_the_turns_first_room_event_goes_first(self):
        a, b = self.connect("alice"), self.connect("bob")
        writes = CountingWrites(b)
        self.same_turn((b, b"/ping p\n"), (a, b"m1\n"), (a, b"m2\n"))
        self.assertEqual(types(b.events()), [("pong", "p"), ("message", "m1"),
                                             ("message", "m2")])
        self.assertEqual(writes.calls, 1)

    def test_joiner_mid_turn_sees_only_what_follows_its_join(self):
        a, b = self.connect("alice"), self.connect("bob")
        c = self.connect()
        self.same_turn((a, b"before\n"), (c, b"/nick carol\n"), (a, b"after\n"))
        got = types(c.events())
        self.assertEqual(got, [("nick", None), ("join", "carol"), ("names", None),
                               ("message", "after")])
        self.assertEqual(types(b.events()), [
            ("message", "before"), ("join", "carol"), ("message", "after")])

    def test_leaver_mid_turn_gets_traffic_until_it_left(self):
        a, b, w = self.connect("alice"), self.connect("bob"), self.connect("will")
        self.same_turn((a, b"before\n"), (b, b"/part\n/join elsewhere\n"), (a, b"after\n"))
        got = b.events()
        self.assertEqual(types(got), [
            ("message", "before"), ("part", "bob"), ("join", "bob"), ("names", None)])
        self.assertEqual(got[1]["room"], "lobby")
        self.assertEqual(got[2]["room"], "elsewhere")
        self.assertEqual(types(w.events()), [
            ("message", "before"), ("part", "bob"), ("message", "after")])

    def test_leave_and_come_back_in_one_turn(self):
        a, b = self.connect("alice"), self.connect("bob")
        self.same_turn((a, b"one\n"), (b, b"/part\n/join x\n"), (a, b"two\n"),
                       (b, b"/part\n/join lobby\n"), (a, b"three\n"))
        self.assertEqual(types(b.events()), [
            ("message", "one"), ("part", "bob"), ("join", "bob"), ("names", None),
            ("part", "bob"), ("join", "bob"), ("names", None), ("message", "three")])

    def test_quitter_gets_its_quit_then_bye(self):
        a, b = self.connect("alice"), self.connect("bob")
        self.same_turn((a, b"one\n"), (b, b"/quit done\n"), (a, b"two\n"))
        self.assertEqual(types(b.events()), [("message", "one"), ("quit", "bob"),
                                             ("bye", None)])
        self.assertTrue(b.transport.disconnecting)

    def test_hub_without_a_scheduler_delivers_at_once(self):
        hub = Hub()
        got = []
        m = hub.connect(got.append)
        hub.register(m)
        hub.say(hub.connect(lambda e: None), "hello")
        self.assertEqual([e.type for e in got], ["join", "names", "join", "message"])


class CoalescingServerTests(ServerTestCase):
    server_args = ("--rate", "10000", "--burst", "10000")

    def test_flood_arrives_whole_in_order_without_text_echo(self):
        watchers = [self.client(f"w{i}") for i in range(8)]
        texter = self.client("texter", json=False)
        sender = self.client("sender")
        for w in watchers:
            w.expect_event("join", nick="sender")
        texter.expect_text("sender joined")
        n = 300
        sender.send(*[f"m{i}" for i in range(n)])
        texter.send(*[f"t{i}" for i in range(20)])
        for w in watchers + [sender]:
            got = []
            while len(got) < n + 20:
                ev = w.event()
                if ev["type"] == "message":
                    got.append(ev)
            mine = [e["text"] for e in got if e["nick"] == "sender"]
            self.assertEqual(mine, [f"m{i}" for i in range(n)])
            theirs = [e["text"] for e in got if e["nick"] == "texter"]
            self.assertEqual(theirs, [f"t{i}" for i in range(20)])
            ids = [e["id"] for e in got]
            self.assertEqual(ids, sorted(ids))
        texter.send("/ping done")
        texter.expect_text("pong done")
        self.assertEqual([line for line in texter.seen if "<texter>" in line], [])
        self.assertEqual(len([line for line in texter.seen if "<sender>" in line]), n)

    def test_join_and_leave_during_a_flood(self):
        watcher = self.client("watcher")
        sender = self.client("sender")
        watcher.expect_event("join", nick="sender")
        n = 400
        leaver = self.client("leaver")
        joiner = self.server.client()
        self.addCleanup(joiner.close)
        for chunk in range(8):
            sender.send(*[f"m{i}" for i in range(chunk * 50, chunk * 50 + 50)])
            if chunk == 2:
                joiner.send("/mode json", "/nick joiner")
            if chunk == 4:
                leaver.send("/part", "/join elsewhere")
            time.sleep(0.01)
        sender.send("/ping end")
        sender.expect_event("pong", token="end")
        sender.send("end")
        # The joiner: its join, then names, then a gapless tail of the flood.
        evs = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = joiner.readline()
            if not line.startswith("{"):
                continue  # the text welcome, before /mode json
            ev = json.loads(line)
            evs.append(ev)
            if ev["type"] == "message" and ev["text"] == "end":
                break
        kinds = [e["type"] for e in evs if e["type"] != "welcome"]
        first_msg = kinds.index("message") if "message" in kinds else len(kinds)
        self.assertEqual(kinds[kinds.index("join"):kinds.index("join") + 2], ["join", "names"])
        self.assertLess(kinds.index("names"), first_msg)
        texts = [e["text"] for e in evs if e["type"] == "message"]
        self.assertEqual(texts[-1], "end")
        tail = [int(t[1:]) for t in texts[:-1]]
        self.assertEqual(tail, list(range(n - len(tail), n)))
        # The leaver: a gapless head of the flood, its part, then elsewhere only.
        evs = []
        while True:
            ev = leaver.event()
            evs.append(ev)
            if ev["type"] == "names" and ev["room"] == "elsewhere":
                break
        self.assertEqual([e["type"] for e in evs[-3:]], ["part", "join", "names"])
        head = [int(e["text"][1:]) for e in evs if e["type"] == "message"]
        self.assertEqual(head, list(range(len(head))))
        self.assertEqual(evs[-3]["room"], "lobby")
        self.assertEqual([e for e in leaver.quiet(0.3) if '"message"' in e], [])
