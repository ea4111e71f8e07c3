"""The desktop client's Tk-free core: model, protocol, session, reconnect loop. No display."""

import json
from datetime import datetime, timezone

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.client import model as m
from twisted_chat.client.protocol import ChatClientFactory
from twisted_chat.client.session import ChatSession, connect

T0 = datetime(2026, 11, 23, 23, 20, tzinfo=timezone.utc).timestamp()


def ev(type, **fields):
    return dict(fields, type=type)


class ModelTestCase(SynchronousTestCase):
    def setUp(self):
        self.now = T0
        self.model = m.ConversationModel(nick="alice", clock=lambda: self.now, tz=timezone.utc)
        self.changes = []
        self.model.subscribe(lambda change, value: self.changes.append((change, value)))

    def login(self, room="lobby", others=("bob",)):
        md = self.model
        md.connected()
        md.handle(ev("welcome", nick="guest1", server="s", version="0.1.0"))
        md.handle(ev("nick", old="guest1", new="alice", ts="2026-11-24T04:12:00.123Z"))
        md.handle(ev("join", room=room, nick="alice", ts="2026-11-24T04:12:00.123Z"))
        md.handle(ev("names", room=room, nicks=list(others) + ["alice"]))

    def texts(self):
        return [line.render() for line in self.model.lines]


class ModelTests(ModelTestCase):
    def test_login_sets_nick_room_and_members(self):
        self.login()
        md = self.model
        self.assertEqual((md.nick, md.room, md.members), ("alice", "lobby", ["bob", "alice"]))
        self.assertEqual(md.status_text(), "Connected as alice in lobby")
        self.assertEqual(md.title(), "#lobby — alice — twisted-chat")
        self.assertIn("[04:12] -- you joined lobby", self.texts())
        kinds = {c for c, _ in self.changes}
        self.assertLessEqual({m.ROOM_CHANGED, m.MEMBERS_CHANGED, m.NICK_CHANGED,
                              m.STATUS_CHANGED, m.LINE_ADDED}, kinds)

    def test_members_follow_join_part_nick_names(self):
        self.login()
        md = self.model
        md.handle(ev("join", room="lobby", nick="carol", ts="2026-11-24T04:13:00.000Z"))
        self.assertEqual(md.members, ["bob", "alice", "carol"])
        md.handle(ev("nick", old="carol", new="caroline", ts="2026-11-24T04:13:01.000Z"))
        self.assertEqual(md.members, ["bob", "alice", "caroline"])
        md.handle(ev("part", room="lobby", nick="bob", ts="2026-11-24T04:14:00.000Z",
                     reason="quit: bye"))
        self.assertEqual(md.members, ["alice", "caroline"])
        self.assertEqual(self.texts()[-3:], [
            "[04:13] -- carol joined lobby",
            "[04:13] -- carol is now known as caroline",
            "[04:14] -- bob left lobby (quit: bye)",
        ])
        # names of another room (a /who dev) is shown, not taken as ours.
        md.handle(ev("names", room="dev", nicks=["zed"]))
        self.assertEqual(md.members, ["alice", "caroline"])
        self.assertEqual(self.texts()[-1], "[23:20] -- in dev: zed")
        # A names of our room replaces the list.
        md.handle(ev("names", room="LOBBY", nicks=["alice"]))
        self.assertEqual(md.members, ["alice"])

    def test_own_nick_change_and_room_change(self):
        self.login()
        md = self.model
        md.handle(ev("nick", old="alice", new="alicia", ts="2026-11-24T04:15:00.000Z"))
        self.assertEqual((md.nick, md.wanted_nick), ("alicia", "alicia"))
        self.assertEqual(md.members, ["bob", "alicia"])
        md.handle(ev("part", room="lobby", nick="alicia", ts="x", reason="left"))
        md.handle(ev("join", room="dev", nick="alicia", ts="2026-11-24T04:16:00.000Z"))
        md.handle(ev("names", room="dev", nicks=["alicia"]))
        self.assertEqual((md.room, md.members), ("dev", ["alicia"]))
        self.assertIn((m.ROOM_CHANGED, "dev"), self.changes)

    def test_message_kinds(self):
        self.login()
        md = self.model
        md.handle(ev("message", id=1, ts="2026-11-24T04:20:00.000Z", room="lobby",
                     nick="alice", text="mine"))
        md.handle(ev("message", id=2, ts="2026-11-24T04:21:00.000Z", room="lobby",
                     nick="bob", text="his"))
        md.handle(ev("message", id=3, ts="2026-11-24T04:22:00.000Z", room="lobby",
                     nick="bob", text="waves", action=True))
        md.handle(ev("private", id=4, ts="2026-11-24T04:23:00.000Z", to="alice",
                     text="psst", **{"from": "bob"}))
        md.handle(ev("private", id=5, ts="2026-11-24T04:24:00.000Z", to="bob",
                     text="ok", **{"from": "alice"}))
        md.handle(ev("error", code="no-such-nick", message="nobody is called zed"))
        got = [(line.kind, line.render()) for line in md.lines[-5:]]
        self.assertEqual(got, [
            (m.OWN, "[04:20] <alice> mine"),
            (m.OTHER, "[04:21] <bob> his"),
            (m.ACTION, "[04:22] * bob waves"),
            (m.PRIVATE, "[04:24] -> *bob* ok"),  # sent from here: said here too
            (m.ERROR, "[23:20] !! no-such-nick: nobody is called zed"),
        ])
        # The private messages are a conversation of their own, with an entry.
        bob = md.find_query("BOB")
        self.assertEqual([(line.kind, line.render()) for line in bob.lines], [
            (m.PRIVATE, "[04:23] *bob* psst"),
            (m.PRIVATE, "[04:24] -> *bob* ok"),
        ])
        self.assertEqual([c.label() for c in md.listing()], ["#lobby", "*bob* (1) !"])

    def test_nick_taken_tells_how_to_pick_another(self):
        md = self.model
        md.connected()
        md.handle(ev("welcome", nick="guest1", server="s", version="0.1.0"))
        md.handle(ev("error", code="nick-taken", message="the nick alice is taken"))
        self.assertEqual(md.lines[-1].kind, m.ERROR)
        self.assertIn("/nick", md.lines[-1].text)
        self.assertEqual(md.nick, "guest1")
        self.assertEqual(md.wanted_nick, "alice")  # asked for again on reconnect
        self.assertEqual(self.changes[-1], (m.NICK_CHANGED, "guest1"))  # resets the field

    def test_unread_count_while_unfocused(self):
        self.login()
        md = self.model
        md.set_focus(False)
        md.handle(ev("message", id=1, ts="t", room="lobby", nick="bob", text="one"))
        md.handle(ev("message", id=2, ts="t", room="lobby", nick="alice", text="own"))
        md.handle(ev("message", id=0, ts="t", room="lobby", nick="bob", text="old",
                     history=True))
        md.handle(ev("private", id=3, ts="t", to="alice", text="two", **{"from": "bob"}))
        self.assertEqual(md.title(), "(2) #lobby — alice — twisted-chat")
        self.assertIn((m.TITLE_CHANGED, md.title()), self.changes)
        md.set_focus(True)
        self.assertEqual(md.title(), "#lobby — alice — twisted-chat")

    def test_unknown_events_and_fields_are_ignored(self):
        self.login()
        md = self.model
        before = len(md.lines)
        md.handle(ev("telepathy", room="lobby", nick="bob"))
        md.handle({"no": "type"})
        md.handle(ev("message", id=9, ts="2026-11-24T04:30:00.000Z", room="lobby",
                     nick="bob", text="old news", history=True, shiny=[1, 2]))
        self.assertEqual(len(md.lines), before + 1)
        self.assertTrue(md.lines[-1].history)
        self.assertEqual(md.lines[-1].render(), "[04:30] <bob> old news")

    def test_replayed_history_is_not_shown_twice(self):
        self.login()
        md = self.model
        md.handle(ev("message", id=7, ts="2026-11-24T04:30:00.000Z", room="lobby",
                     nick="bob", text="live"))
        before = len(md.lines)
        # After a reconnect the server replays recent history: 7 is known, 6 is not.
        md.handle(ev("message", id=6, ts="2026-11-24T04:29:00.000Z", room="lobby",
                     nick="bob", text="older", history=True))
        md.handle(ev("message", id=7, ts="2026-11-24T04:30:00.000Z", room="lobby",
                     nick="bob", text="live", history=True))
        self.assertEqual([line.text for line in md.lines[before:]], ["older"])
        # A live message is never skipped, even with a reused id (a restarted
        # server without storage counts from 1 again).
        md.handle(ev("message", id=7, ts="2026-11-24T04:31:00.000Z", room="lobby",
                     nick="bob", text="new server"))
        self.assertEqual(md.lines[-1].text, "new server")

    def test_replayed_history_sits_above_a_new_messages_separator(self):
        self.login()
        md = self.model
        md.handle(ev("message", id=3, ts="2026-11-23T18:02:00.000Z", room="lobby",
                     nick="bob", text="yesterday", history=True))
        md.handle(ev("history-end", room="lobby", count=1, limit=50, oldest=3))
        md.handle(ev("message", id=4, ts="2026-11-24T04:31:00.000Z", room="lobby",
                     nick="bob", text="today"))
        kinds = [(line.kind, line.text, line.history) for line in md.lines[-3:]]
        self.assertEqual(kinds, [(m.OTHER, "yesterday", True), (m.SEPARATOR, "new messages", False),
                                 (m.OTHER, "today", False)])
        # A replay of nothing new (a reconnect) adds no second separator.
        md.handle(ev("message", id=4, ts="2026-11-24T04:31:00.000Z", room="lobby",
                     nick="bob", text="today", history=True))
        md.handle(ev("history-end", room="lobby", count=1, limit=50, oldest=4))
        self.assertEqual(md.lines[-1].text, "today")
        md.handle(ev("history-end", room="lobby", count=0, limit=50))
        self.assertEqual(md.lines[-1].text, "no earlier messages in #lobby")

    def test_presence_batches_update_members(self):
        self.login(others=("bob", "carol"))
        md = self.model
        md.handle(ev("presence", room="lobby", joined=["dave", "erin"], left=["bob"]))
        self.assertEqual(md.members, ["carol", "alice", "dave", "erin"])
        md.handle(ev("presence", room="elsewhere", joined=["zed"], left=[]))
        self.assertNotIn("zed", md.members)

    def test_status_through_a_reconnect(self):
        self.login()
        md = self.model
        md.connection_lost("Connection was closed cleanly.")
        self.assertEqual(md.members, [])
        self.assertEqual(md.room, "lobby")  # kept, to be joined again
        self.assertEqual(md.lines[-1].kind, m.ERROR)
        md.retrying(4.2)
        self.assertEqual(md.status_text(),
                         "Connection was closed cleanly — reconnecting in 4 s")
        self.now += 3
        self.assertEqual(md.status_text(),
                         "Connection was closed cleanly — reconnecting in 1 s")
        md.connecting()
        self.assertEqual(md.status_text(), "Connecting…")
        md.connection_failed("Connection refused")
        self.assertEqual(md.status_text(), "Error: Connection refused")
        md.stopped()
        self.assertEqual(md.status_text(), "Disconnected")

    def test_bad_timestamps_fall_back_to_now(self):
        self.model.handle(ev("message", id=1, ts="yesterday", room="r", nick="bob", text="x"))
        self.model.handle(ev("message", id=2, room="r", nick="bob", text="y"))
        self.assertEqual(self.texts()[-2:], ["[23:20] <bob> x", "[23:20] <bob> y"])

    def test_lines_are_bounded(self):
        md = m.ConversationModel(nick="a", max_lines=3)
        for i in range(5):
            md.system(f"line {i}")
        self.assertEqual([line.text for line in md.lines], ["line 2", "line 3", "line 4"])


class RoomsModelTests(ModelTestCase):
    """Protocol v2: several rooms at once, each with its own state."""

    def join_dev(self, show=True):
        md = self.model
        if show:
            md.request_join("dev")
        md.handle(ev("join", room="dev", nick="alice", ts="2026-11-24T04:13:00.000Z"))
        md.handle(ev("names", room="dev", nicks=["dave", "carol", "alice", "bob"],
                     ops=["carol"], voiced=["dave"]))
        md.handle(ev("topic", room="dev", topic="release on Friday", by="carol",
                     ts="2026-11-24T03:00:00.000Z"))
        md.handle(ev("history-end", room="dev", count=0, limit=50))

    def test_each_room_keeps_its_lines_members_and_topic(self):
        self.login()
        md = self.model
        self.join_dev()
        self.assertEqual([c.label() for c in md.listing()], ["#lobby", "#dev"])
        self.assertEqual((md.room, md.shown), ("dev", "#dev"))  # asked for: shown
        self.assertEqual(md.marked_members(), ["@carol", "+dave", "alice", "bob"])
        self.assertEqual(md.topic_text(), "release on Friday (set by carol)")
        self.assertEqual(md.title(), "#dev — alice — twisted-chat")
        self.assertEqual(self.texts(), [
            "[04:13] -- you joined dev",
            "[23:20] -- in dev: @carol, +dave, alice, bob",
            "[03:00] -- topic: release on Friday (set by carol)",
            "[23:20] -- no earlier messages in #dev",
        ])
        md.handle(ev("message", id=1, ts="2026-11-24T04:20:00.000Z", room="lobby",
                     nick="bob", text="in the lobby"))
        self.assertNotIn("in the lobby", " ".join(self.texts()))
        self.changes.clear()
        md.select("#lobby")
        self.assertIn((m.ROOM_CHANGED, "lobby"), self.changes)
        self.assertIn((m.TOPIC_CHANGED, "(no topic)"), self.changes)
        self.assertEqual(self.texts()[-1], "[04:20] <bob> in the lobby")
        self.assertEqual(md.members, ["bob", "alice"])
        self.assertEqual(md.status_text(), "Connected as alice in lobby")
        # A topic change reaches its room, and the bar if shown.
        md.handle(ev("topic", room="lobby", topic="", by="bob", ts="2026-11-24T04:21:00.000Z"))
        self.assertEqual(self.texts()[-1], "[04:21] -- no topic (cleared by bob)")
        md.handle(ev("topic", room="dev", topic="release on Monday", by="carol", ts="t"))
        self.assertEqual(md.find_room("dev").topic_text(), "release on Monday (set by carol)")
        self.assertEqual(md.topic_text(), "(no topic)")

    def test_a_join_not_asked_for_does_not_take_the_view(self):
        self.login()
        self.join_dev(show=False)  # e.g. joined again after a reconnect
        self.assertEqual(self.model.room, "lobby")

    def test_unread_count_and_mention_mark_per_room(self):
        self.login()
        md = self.model
        self.join_dev(show=False)
        dev = md.find_room("dev")
        md.handle(ev("message", id=1, ts="t", room="dev", nick="bob", text="build is red"))
        md.handle(ev("message", id=2, ts="t", room="dev", nick="alice", text="own"))
        md.handle(ev("message", id=0, ts="t", room="dev", nick="bob", text="old",
                     history=True))
        md.handle(ev("message", id=3, ts="t", room="lobby", nick="bob", text="Alice?"))
        self.assertEqual((dev.unread, dev.mention), (1, False))
        self.assertEqual(md.find_room("lobby").unread, 0)  # shown
        self.assertIn((m.CONVERSATIONS_CHANGED, md.listing()), self.changes)
        md.handle(ev("message", id=4, ts="t", room="dev", nick="carol", text="ALICE: look"))
        md.handle(ev("message", id=5, ts="t", room="dev", nick="carol", text="alicewise, no"))
        self.assertEqual([c.label() for c in md.listing()], ["#lobby", "#dev (3) !"])
        md.select_relative(1)
        self.assertEqual(md.room, "dev")
        self.assertEqual([c.label() for c in md.listing()], ["#lobby", "#dev"])
        self.assertEqual(self.texts()[-1], "[23:20] <carol> alicewise, no")
        md.select_relative(1)  # wraps round
        self.assertEqual(md.room, "lobby")
        md.select_relative(-1)
        self.assertEqual(md.room, "dev")

    def test_operator_and_voice_marks_follow_mode_events(self):
        self.login()
        md = self.model
        self.join_dev()
        md.handle(ev("mode", room="dev", by="carol", ts="2026-11-24T04:30:00.000Z",
                     mode="op", on=True, nick="bob"))
        md.handle(ev("mode", room="dev", by="carol", ts="2026-11-24T04:30:00.000Z",
                     mode="voice", on=False, nick="dave"))
        md.handle(ev("mode", room="dev", by="carol", ts="2026-11-24T04:31:00.000Z",
                     mode="moderated", on=True))
        md.handle(ev("mode", room="dev", by="carol", ts="2026-11-24T04:31:00.000Z",
                     mode="limit", on=True, value=10))
        self.assertEqual(md.marked_members(), ["@bob", "@carol", "alice", "dave"])
        self.assertEqual(self.texts()[-4:], [
            "[04:30] -- carol gives operator to bob",
            "[04:30] -- carol takes voice from dave",
            "[04:31] -- carol sets moderated on",
            "[04:31] -- carol sets limit 10",
        ])
        self.assertIn((m.MEMBERS_CHANGED, md.members), self.changes)

    def test_nick_and_quit_reach_every_shared_room(self):
        self.login()
        md = self.model
        self.join_dev()
        md.handle(ev("private", id=9, ts="t", to="alice", text="psst", **{"from": "bob"}))
        md.handle(ev("mode", room="dev", by="carol", ts="t", mode="op", on=True, nick="bob"))
        md.handle(ev("nick", old="bob", new="rob", ts="2026-11-24T04:40:00.000Z"))
        lobby, dev = md.find_room("lobby"), md.find_room("dev")
        self.assertEqual(lobby.members, ["rob", "alice"])
        self.assertEqual(dev.marked_members(), ["@carol", "@rob", "+dave", "alice"])
        for conv in (lobby, dev):
            self.assertEqual(conv.lines[-1].render(), "[04:40] -- bob is now known as rob")
        # The private conversation follows the peer's new nick.
        self.assertIsNone(md.find_query("bob"))
        self.assertEqual(md.find_query("rob").lines[-1].text, "bob is now known as rob")
        md.handle(ev("quit", nick="rob", ts="2026-11-24T04:41:00.000Z", reason="quit: lunch"))
        self.assertEqual(lobby.members, ["alice"])
        self.assertEqual(dev.marked_members(), ["@carol", "+dave", "alice"])
        for conv in (lobby, dev):
            self.assertEqual(conv.lines[-1].render(), "[04:41] -- rob quit (quit: lunch)")
        # Our own nick change: said in every room.
        md.handle(ev("nick", old="alice", new="alicia", ts="2026-11-24T04:42:00.000Z"))
        self.assertEqual(lobby.lines[-1].text, "you are now known as alicia")
        self.assertEqual(dev.lines[-1].text, "you are now known as alicia")
        self.assertEqual(dev.marked_members(), ["@carol", "+dave", "alicia"])

    def test_kick_removes_a_member_or_the_room(self):
        self.login()
        md = self.model
        self.join_dev()
        md.handle(ev("kick", room="dev", nick="dave", by="carol", reason="spam",
                     ts="2026-11-24T04:50:00.000Z"))
        self.assertEqual(md.members, ["carol", "alice", "bob"])
        self.assertEqual(self.texts()[-1], "[04:50] -- carol kicked dave from dev (spam)")
        md.handle(ev("kick", room="dev", nick="alice", by="carol", reason="enough",
                     ts="2026-11-24T04:51:00.000Z"))
        self.assertEqual([c.label() for c in md.listing()], ["#lobby"])
        self.assertEqual(md.room, "lobby")  # the room left the list: the next is shown
        self.assertEqual((md.lines[-1].kind, md.lines[-1].render()),
                         (m.ERROR, "[04:51] !! carol kicked you from dev (enough)"))
        md.handle(ev("message", id=1, ts="t", room="dev", nick="bob", text="gone?"))
        self.assertIsNone(md.find_room("dev"))

    def test_own_part_removes_the_room(self):
        self.login()
        md = self.model
        self.join_dev()
        md.handle(ev("part", room="lobby", nick="alice", ts="2026-11-24T05:00:00.000Z",
                     reason="left"))
        self.assertEqual([c.label() for c in md.listing()], ["#dev"])
        self.assertEqual(md.room, "dev")
        md.handle(ev("part", room="dev", nick="alice", ts="2026-11-24T05:01:00.000Z",
                     reason="left: bye"))
        self.assertEqual((md.listing(), md.room, md.shown), ([], None, None))
        self.assertEqual(self.texts(), ["[05:01] -- you left dev (left: bye)"])
        self.assertEqual(md.title(), "alice — twisted-chat")

    def test_history_separator_per_room(self):
        self.login()
        md = self.model
        md.request_join("dev")
        md.handle(ev("join", room="dev", nick="alice", ts="t"))
        md.handle(ev("message", id=1, ts="t", room="dev", nick="bob", text="old dev",
                     history=True))
        md.handle(ev("history-end", room="dev", count=1, limit=50, oldest=1))
        md.handle(ev("history-end", room="lobby", count=0, limit=50))
        self.assertEqual([line.kind for line in md.find_room("dev").lines],
                         [m.SYSTEM, m.OTHER, m.SEPARATOR])
        self.assertEqual(md.find_room("lobby").lines[-1].text, "no earlier messages in #lobby")

    def test_answers_about_rooms_are_said_in_words(self):
        self.login()
        md = self.model
        self.join_dev()
        md.handle(ev("flags", room="dev", **{"topic-lock": True, "moderated": False,
                                            "invite-only": False, "key": "s3cret",
                                            "limit": 20}))
        md.handle(ev("bans", room="dev", bans=[{"entry": "account:zed", "nick": "zed",
                                                 "by": "carol", "ts": "t"}]))
        md.handle(ev("invite", room="secret", by="carol", ts="2026-11-24T05:10:00.000Z"))
        md.handle(ev("topic", room="elsewhere", topic="", by="", ts="t"))
        md.handle(ev("names", room="qa", nicks=["zed", "amy"], ops=["zed"]))
        self.assertEqual(self.texts()[-5:], [
            "[23:20] -- flags of dev: topic-lock on, moderated off, invite-only off, "
            "key s3cret, limit 20",
            "[23:20] -- bans of dev: account:zed (zed)",
            "[05:10] -- carol invites you to secret: type /join secret",
            "[23:20] -- topic of elsewhere: (none)",
            "[23:20] -- in qa: @zed, amy",
        ])
        self.assertEqual([c.label() for c in md.listing()], ["#lobby", "#dev"])

    def test_a_drop_keeps_the_rooms_listed_to_join_again(self):
        self.login()
        md = self.model
        self.join_dev()
        md.connection_lost("Connection lost.")
        for conv in md.rooms():
            self.assertEqual((conv.joined, conv.members), (False, []))
            self.assertEqual(conv.lines[-1].render(), "[23:20] !! disconnected: Connection lost.")
        self.assertEqual(md.topic_text(), "(not joined)")
        self.assertEqual(md.room, "dev")


class InputHistoryTests(SynchronousTestCase):
    def test_up_and_down(self):
        h = m.InputHistory()
        for text in ("one", "two", "two", "three"):
            h.add(text)
        self.assertEqual(h.items, ["one", "two", "three"])
        self.assertEqual(h.previous("draft"), "three")
        self.assertEqual(h.previous("three"), "two")
        self.assertEqual(h.previous("two"), "one")
        self.assertEqual(h.previous("one"), "one")  # stays at the oldest
        self.assertEqual(h.next("one"), "two")
        self.assertEqual(h.next("two"), "three")
        self.assertEqual(h.next("three"), "draft")  # back to what was being typed
        self.assertEqual(h.next("draft"), "draft")

    def test_limit(self):
        h = m.InputHistory(limit=2)
        for text in ("a", "b", "c"):
            h.add(text)
        self.assertEqual(h.items, ["b", "c"])


class SessionTestCase(SynchronousTestCase):
    def setUp(self):
        self.model = m.ConversationModel(nick="alice", tz=timezone.utc)
        self.quits = []
        self.session = ChatSession(self.model, on_quit=self.quits.append, max_queued=2)
        self.factory = ChatClientFactory(self.session)

    def open(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def sent(self, transport):
        lines = transport.value().decode("utf-8").split("\n")
        transport.clear()
        return lines[:-1]


class ProtocolTests(SessionTestCase):
    def test_logs_in_at_once(self):
        proto, transport = self.open()
        self.assertEqual(self.sent(transport), ["/mode json", "/nick alice"])
        self.assertEqual(self.model.state, m.CONNECTED)

    def test_events_reach_the_model_text_welcome_is_skipped(self):
        proto, transport = self.open()
        proto.dataReceived(
            b"-- welcome to twisted-chat (twisted-chat 0.1.0); you are guest1\r\n"
            b"-- type /help for commands\r\n"
            b'{"type":"welcome","nick":"guest1","server":"twisted-chat","version":"0.1.0"}\r\n'
            b'{"type":"nick","old":"guest1","new":"alice","ts":"2026-11-24T04:12:00.123Z"}\r\n'
            b'{"type":"join","room":"lobby","nick":"alice","ts":"2026-11-24T04:12:00.123Z"}\r\n'
            b'{"type":"names","room":"lobby","nicks":["bob","alice"]}\r\n'
            b'{"type":"message","id":1,"ts":"2026-11-24T04:12:01.000Z","room":"lobby",'
            b'"nick":"bob","text":"h\xc3\xa9llo"}\r\n'
        )
        self.assertEqual((self.model.nick, self.model.room), ("alice", "lobby"))
        self.assertEqual(self.model.members, ["bob", "alice"])
        self.assertEqual(self.model.lines[-1].render(), "[04:12] <bob> héllo")
        self.assertFalse([line for line in self.model.lines if "welcome to" in line.text])

    def test_garbage_lines_do_not_break_it(self):
        proto, transport = self.open()
        proto.dataReceived(b'{"type":"welcome","nick":"alice"}\n[1, 2]\n\xff\xfe\n{"type": 3}\n'
                           b'{"type":"info","message":"still fine"}\n')
        self.assertEqual(self.model.lines[-1].text, "still fine")
        self.assertTrue(transport.connected)

    def test_input_goes_out_as_typed(self):
        proto, transport = self.open()
        self.sent(transport)
        self.session.submit("hello there")
        self.session.submit("/join dev")
        self.session.submit("/msg bob hi")
        self.session.submit("   ")
        self.session.submit("pasted\nlines\r\n")
        self.assertEqual(self.sent(transport),
                         ["hello there", "/join dev", "/msg bob hi", "pasted", "lines"])

    def test_mode_stays_json(self):
        proto, transport = self.open()
        self.sent(transport)
        self.session.submit("/mode text")
        self.assertEqual(self.sent(transport), [])
        self.assertEqual(self.model.lines[-1].kind, m.ERROR)

    def test_quit_goes_to_the_app(self):
        proto, transport = self.open()
        self.session.submit("/quit see you")
        self.assertEqual(self.quits, ["see you"])
        self.sent(transport)
        self.session.quit("see you")
        self.assertEqual(self.sent(transport), ["/quit see you"])

    def test_reconnect_restores_nick_room_and_sends_the_queue(self):
        proto, transport = self.open()
        proto.dataReceived(
            b'{"type":"welcome","nick":"guest1"}\n'
            b'{"type":"nick","old":"guest1","new":"alicia","ts":"t"}\n'
            b'{"type":"join","room":"dev","nick":"alicia","ts":"t"}\n')
        proto.connectionLost(Failure(ConnectionRefusedError()))
        self.assertIsNone(self.session.protocol)
        # Typed while disconnected: queued (and shown), up to the limit.
        for text in ("one", "two", "three"):
            self.session.submit(text)
        unsent = [line for line in self.model.lines if line.kind == m.UNSENT]
        self.assertEqual([line.who for line in unsent], ["(queued)", "(queued)", "(not sent)"])
        # Events from a dead connection are ignored.
        proto.dataReceived(b'{"type":"info","message":"ghost"}\n')
        self.assertNotEqual(self.model.lines[-1].text, "ghost")

        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/nick alicia"])
        self.assertEqual(self.session.outbox, ["/say dev one", "/say dev two"])
        # Registered, the server puts us in its default room: back to dev,
        # out of the default room again, then the queue (to dev, where it was typed).
        proto2.dataReceived(
            b'{"type":"welcome","nick":"guest2"}\n'
            b'{"type":"nick","old":"guest2","new":"alicia","ts":"t"}\n'
            b'{"type":"join","room":"lobby","nick":"alicia","ts":"t"}\n')
        self.assertEqual(self.sent(transport2),
                         ["/join dev", "/part lobby", "/say dev one", "/say dev two"])
        self.assertEqual(self.session.outbox, [])
        self.assertEqual(self.model.room, "dev")  # still shown


class RoomsSessionTests(SessionTestCase):
    def events(self, proto, *events):
        proto.dataReceived(b"".join(json.dumps(e).encode() + b"\n" for e in events))

    def registered(self, proto, room="lobby"):
        self.events(proto, ev("welcome", nick="guest1"),
                    ev("nick", old="guest1", new="alice", ts="t"),
                    ev("join", room=room, nick="alice", ts="t"))

    def test_the_entry_speaks_to_the_shown_conversation(self):
        proto, transport = self.open()
        self.registered(proto)
        self.sent(transport)
        say = self.session.submit
        say("hello")
        say("/me waves")
        say("//etc/passwd is a path")
        say("/join #dev sesame")
        self.assertEqual(self.sent(transport), ["/say lobby hello", "/describe lobby waves",
                                                "/say lobby /etc/passwd is a path",
                                                "/join #dev sesame"])
        self.events(proto, ev("join", room="dev", nick="alice", ts="t"))
        self.assertEqual(self.model.room, "dev")
        self.assertEqual(self.model.find_room("dev").join_key, "sesame")
        say("in dev")
        say("/topic")
        say("/who")
        say("/msg bob hi")
        say("/join lobby")  # a room we are in: shown, nothing sent
        self.assertEqual(self.model.room, "lobby")
        say("/part")
        self.assertEqual(self.sent(transport), ["/say dev in dev", "/topic dev", "/who",
                                                "/msg bob hi", "/part lobby"])
        self.events(proto, ev("part", room="lobby", nick="alice", ts="t", reason="left"))
        self.assertEqual(self.model.room, "dev")
        # A private conversation: text goes to the peer; /part closes its entry.
        self.events(proto, ev("private", id=3, ts="t", to="alice", text="psst",
                              **{"from": "bob"}))
        self.model.select("*bob")
        say("yes?")
        say("/me nods")
        self.assertEqual(self.model.lines[-1].kind, m.ERROR)
        say("/part")
        self.assertEqual(self.sent(transport), ["/msg bob yes?"])
        self.assertEqual([c.label() for c in self.model.listing()], ["#dev"])
        say("/part dev see you")
        self.assertEqual(self.sent(transport), ["/part dev see you"])

    def test_reconnect_rejoins_every_room_and_keeps_the_shown_one(self):
        proto, transport = self.open()
        self.registered(proto)
        for room, key in (("dev", None), ("ops", "k3y"), ("qa", None)):
            self.session.submit(f"/join {room} {key}" if key else f"/join {room}")
            self.events(proto, ev("join", room=room, nick="alice", ts="t"))
        self.model.select("#ops")
        self.events(proto, ev("part", room="qa", nick="alice", ts="t", reason="left"))
        proto.connectionLost(Failure(ConnectionRefusedError()))
        self.session.submit("typed in ops")

        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/nick alice"])
        self.registered(proto2)
        self.assertEqual(self.sent(transport2),
                         ["/join dev", "/join ops k3y", "/say ops typed in ops"])
        self.events(proto2, ev("join", room="dev", nick="alice", ts="t"),
                    ev("join", room="ops", nick="alice", ts="t"))
        self.assertEqual(self.model.room, "ops")
        self.assertEqual([c.label() for c in self.model.listing()],
                         ["#lobby", "#dev", "#ops"])
        self.assertTrue(all(c.joined for c in self.model.rooms()))

    def test_nick_held_after_a_reconnect_is_taken_back_when_its_holder_quits(self):
        proto, transport = self.open()
        self.registered(proto)
        proto.connectionLost(Failure(ConnectionRefusedError()))
        # Elsewhere our old connection still holds the nick (a killed server
        # of a cluster, until the others judge it gone): a guest meanwhile.
        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/nick alice"])
        self.events(proto2, ev("welcome", nick="guest1"),
                    ev("error", code="nick-taken", message="nick taken"),
                    ev("join", room="lobby", nick="guest1", ts="t"))
        self.sent(transport2)
        self.events(proto2, ev("quit", nick="bob", ts="t", reason="server gone"))
        self.assertEqual(self.sent(transport2), [])
        self.events(proto2, ev("quit", nick="ALICE", ts="t", reason="server gone"))
        self.assertEqual(self.sent(transport2), ["/nick alice"])
        self.events(proto2, ev("nick", old="guest1", new="alice", ts="t"))
        self.assertEqual(self.model.status_text(), "Connected as alice in lobby")
        # Our own nick now: another alice's quit is nothing to act on.
        self.events(proto2, ev("quit", nick="alice", ts="t", reason="server gone"))
        self.assertEqual(self.sent(transport2), [])

    def test_room_option_instead_of_the_default_room(self):
        self.model.add_room("dev")  # --room dev
        self.assertEqual((self.model.room, self.model.topic_text()), ("dev", "(not joined)"))
        proto, transport = self.open()
        self.registered(proto)
        self.assertEqual(self.sent(transport),
                         ["/mode json", "/nick alice", "/join dev", "/part lobby"])
        self.assertEqual(self.model.room, "dev")  # lobby never took the view
        self.events(proto, ev("part", room="lobby", nick="alice", ts="t", reason="left"),
                    ev("join", room="dev", nick="alice", ts="t"))
        self.assertEqual([c.label() for c in self.model.listing()], ["#dev"])
        self.assertEqual(self.model.status_text(), "Connected as alice in dev")

    def test_a_room_not_joined_again_can_be_parted_here(self):
        proto, transport = self.open()
        self.registered(proto)
        self.session.submit("/join dev")
        self.events(proto, ev("join", room="dev", nick="alice", ts="t"))
        proto.connectionLost(Failure(ConnectionRefusedError()))
        self.session.submit("/part")  # disconnected: the entry just goes
        self.assertEqual([c.label() for c in self.model.listing()], ["#lobby"])
        self.assertEqual(self.session.outbox, [])


class FakeEndpoint:
    """Connect attempts answered by the test: refused, or a StringTransport."""

    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = Deferred()
        self.attempts.append((factory, d))
        return d


class ReconnectLoopTests(SessionTestCase):
    def test_backoff_status_and_stop(self):
        clock = MemoryReactorClock()
        endpoint = FakeEndpoint()
        service = connect(endpoint, self.session, clock=clock, retry_policy=lambda n: 2.0 * n)
        service.startService()
        self.assertEqual(self.model.state, m.CONNECTING)

        endpoint.attempts[0][1].errback(ConnectionRefusedError("refused"))
        self.assertEqual(self.model.state, m.WAITING)
        self.assertIn("refused", self.model.status_text())
        self.assertIn("reconnecting in 2 s", self.model.status_text())

        clock.advance(2.0)
        self.assertEqual(len(endpoint.attempts), 2)
        factory, d = endpoint.attempts[1]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        self.assertEqual(self.model.state, m.CONNECTED)
        self.assertEqual(transport.value(), b"/mode json\n/nick alice\n")

        # The connection drops: back to waiting, the counter restarted.
        proto.connectionLost(Failure(ConnectionRefusedError("gone")))
        self.assertEqual(self.model.state, m.WAITING)
        self.assertIn("reconnecting in 2 s", self.model.status_text())

        stopped = service.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failed_attempt_is_reported(self):
        class Refusing:
            def connect(self, factory):
                return fail(ConnectionRefusedError("nope"))

        clock = MemoryReactorClock()
        service = connect(Refusing(), self.session, clock=clock, retry_policy=lambda n: 5)
        service.startService()
        self.assertIn("nope", self.model.status_text())
        self.assertIn("reconnecting in 5 s", self.model.status_text())
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])


class LoginTests(SessionTestCase):
    def test_login_is_repeated_after_a_reconnect_then_the_room_joined(self):
        proto, transport = self.open()
        self.session.submit("/login alice correct horse")
        self.assertEqual(self.sent(transport)[-1], "/login alice correct horse")
        proto.dataReceived(
            b'{"type":"welcome","nick":"guest1"}\n'
            b'{"type":"nick","old":"guest1","new":"alice","ts":"t"}\n'
            b'{"type":"join","room":"lobby","nick":"alice","ts":"t"}\n'
            b'{"type":"part","room":"lobby","nick":"alice","ts":"t","reason":"left"}\n'
            b'{"type":"join","room":"dev","nick":"alice","ts":"t"}\n')
        proto.connectionLost(Failure(ConnectionRefusedError()))

        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/login alice correct horse"])
        # The login puts us in the default room; then the client goes back to dev.
        proto2.dataReceived(
            b'{"type":"welcome","nick":"guest7"}\n'
            b'{"type":"nick","old":"guest7","new":"alice","ts":"t"}\n'
            b'{"type":"join","room":"lobby","nick":"alice","ts":"t"}\n')
        self.assertEqual(self.sent(transport2), ["/join dev", "/part lobby"])
        proto2.dataReceived(b'{"type":"join","room":"dev","nick":"alice","ts":"t"}\n')
        self.assertEqual(self.sent(transport2), [])

    def test_a_refused_login_is_forgotten(self):
        proto, transport = self.open()
        self.session.submit("/login alice wrong")
        proto.dataReceived(b'{"type":"error","code":"login-failed",'
                           b'"message":"login failed: wrong name or password"}\n')
        proto.connectionLost(Failure(ConnectionRefusedError()))
        proto2, transport2 = self.open()
        self.assertEqual(self.sent(transport2), ["/mode json", "/nick alice"])

    def test_a_guest_rename_is_not_the_wanted_nick(self):
        proto, transport = self.open()
        proto.dataReceived(
            b'{"type":"welcome","nick":"guest1"}\n'
            b'{"type":"nick","old":"guest1","new":"alice","ts":"t"}\n'
            b'{"type":"nick","old":"alice","new":"guest9","ts":"t"}\n')
        self.assertEqual((self.model.nick, self.model.wanted_nick), ("guest9", "alice"))


class CommandLineTests(SynchronousTestCase):
    """``python -m twisted_chat.client``: options and failures that need no window."""

    def run_client(self, *args, env=None):
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-m", "twisted_chat.client"] + list(args),
                              capture_output=True, text=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL)

    def test_help_lists_the_options(self):
        result = self.run_client("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--host", "--port", "--connect", "--nick", "--room"):
            self.assertIn(option, result.stdout)

    def test_bad_options_are_refused_clearly(self):
        for args, message in ((["--nick", "1abc"], "a nick starts with a letter"),
                              (["--port", "70000"], "--port must be 1-65535"),
                              (["--room", "no spaces"], "room"),
                              (["--connect", "bogus:thing"], "bad --connect")):
            result = self.run_client(*args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(message, result.stderr)
            self.assertNotIn("Traceback", result.stderr)

    def test_no_display_is_a_clear_error(self):
        import os

        env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        result = self.run_client("--nick", "alice", env=env)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("cannot open a window", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
