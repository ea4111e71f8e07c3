"""Batched membership changes (presence) in big rooms.

Unit tests over StringTransport and a Clock (threshold and interval set low),
and an integration test against a real ``twistd chat`` whose events feed the
client's ConversationModel.
"""

import json

from twisted_chat import presence
from twisted_chat.client.model import ConversationModel
from twisted_chat.events import TEXT, Event

from .test_protocol import ProtocolTestCase
from .test_server import ServerTestCase


def kinds(events):
    return [e["type"] for e in events]


class PresenceTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.hub.presence_threshold = 3
        self.hub.presence_interval = 1.0
        self.a, self.b, self.c = self.connect("alice"), self.connect("bob"), self.connect("carol")

    def test_small_rooms_announce_each_join(self):
        self.hub.presence_threshold = 10
        self.connect("dave")
        # connect() drained the output; a fresh join shows what others get
        self.connect().send(b"/nick erin\n")
        self.assertEqual(kinds(self.a.events()), ["join"])

    def test_joins_in_a_big_room_are_batched(self):
        d = self.connect()
        d.send(b"/nick dave\n")
        self.assertEqual(kinds(d.events()), ["nick", "join", "names"])  # its own, at once
        self.assertEqual(self.a.events(), [])
        e = self.connect()
        e.send(b"/nick erin\n")
        self.clock.advance(1.0)
        (ev,) = self.a.events()
        self.assertEqual((ev["type"], ev["room"], ev["joined"], ev["left"]),
                         ("presence", "lobby", ["dave", "erin"], []))
        # the joiner gets the batch too: harmless, it is in its names already
        self.assertEqual(kinds(e.events()), ["nick", "join", "names", "presence"])
        self.clock.advance(5)
        self.assertEqual(self.a.events(), [])  # one event per change, no idle ticks

    def test_leavers_get_their_own_part_others_a_batch(self):
        self.b.send(b"/quit bye\n")
        self.assertEqual(kinds(self.b.events()), ["quit", "bye"])
        self.c.send(b"/part\n/join elsewhere\n")
        self.assertEqual(kinds(self.c.events()), ["part", "join", "names"])
        self.assertEqual(self.a.events(), [])
        self.clock.advance(1.0)
        (ev,) = self.a.events()
        self.assertEqual((ev["joined"], ev["left"]), ([], ["bob", "carol"]))

    def test_join_then_leave_within_an_interval_is_no_news(self):
        d = self.connect()
        d.send(b"/nick dave\n")
        d.send(b"/part\n")
        self.clock.advance(1.0)
        self.assertEqual(self.a.events(), [])

    def test_a_pending_joiner_is_announced_before_it_speaks(self):
        d = self.connect()
        d.send(b"/nick dave\nhello all\n")
        got = self.a.events()
        self.assertEqual(kinds(got), ["presence", "message"])
        self.assertEqual(got[0]["joined"], ["dave"])
        self.clock.advance(1.0)
        self.assertEqual(self.a.events(), [])

    def test_a_pending_joiner_is_announced_before_a_nick_change(self):
        d = self.connect()
        d.send(b"/nick dave\n/nick david\n")
        got = self.a.events()
        self.assertEqual(kinds(got), ["presence", "nick"])
        self.assertEqual((got[1]["old"], got[1]["new"]), ("dave", "david"))

    def test_text_rendering(self):
        ev = Event.timed("presence", 1_700_000_000, room="lobby", joined=["a", "b"],
                         left=["c"])
        self.assertRegex(ev.encode(TEXT).decode(),
                         r"^\[\d\d:\d\d\] #lobby -- 2 joined \(a, b\); 1 left \(c\)\r\n$")

    def test_hub_without_a_timer_never_batches(self):
        self.hub.call_later = None
        room = self.hub.rooms["lobby"]
        self.assertFalse(presence.batched(self.hub, room))


class PresenceServerTests(ServerTestCase):
    server_args = ("--presence-threshold", "3", "--presence-interval", "0.2")

    def test_storm_of_joins_reaches_the_client_model_as_presence(self):
        watcher = self.client("watcher")
        self.client("bob")
        self.client("carol")
        model = ConversationModel(nick="watcher")
        model.handle({"type": "join", "room": "lobby", "nick": "watcher"})
        nicks = [f"n{i}" for i in range(12)]
        watcher.expect_event("join", nick="carol")
        model.handle({"type": "presence", "room": "lobby", "joined": ["bob", "carol"],
                      "left": []})
        others = [self.client(nick) for nick in nicks]
        seen_joined, seen_left = set(), set()

        def presence_until(done):
            while not done():
                ev = watcher.event()
                self.assertNotIn(ev["type"], ("join", "part"))
                if ev["type"] == "presence":
                    seen_joined.update(ev["joined"])
                    seen_left.update(ev["left"])
                    model.handle(ev)

        presence_until(lambda: seen_joined >= set(nicks))
        others[0].send("/quit")
        presence_until(lambda: "n0" in seen_left)
        self.assertEqual(model.members, sorted(model.members, key=["watcher", "bob", "carol",
                                                                    *nicks].index))
        self.assertEqual(set(model.members), {"watcher", "bob", "carol", *nicks[1:]})
        watcher.send("/who")
        self.assertEqual(set(watcher.expect_event("names")["nicks"]), set(model.members))
