"""The per-room memory of recent messages that replays on join are served from."""

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.history import StoredMessage
from twisted_chat.replay import RecentMessages, history_event


class FakeRoom:
    def __init__(self, name, key=None):
        self.name, self.key = name, key or name.lower()


def row(msg_id, text=None, room="Dev"):
    return StoredMessage(msg_id, 1000.0 + msg_id, room, "bob", text or f"m{msg_id}", False)


def ids(events):
    return [e.fields["id"] for e in events]


class RecentMessagesTests(SynchronousTestCase):
    def setUp(self):
        self.recent = RecentMessages(3)
        self.room = FakeRoom("Dev")

    def say(self, msg_id, room=None):
        self.recent.said(room or self.room, msg_id, 1000.0 + msg_id, "bob", f"m{msg_id}")

    def test_unknown_until_read_once(self):
        self.say(1)
        self.assertIsNone(self.recent.replay(self.room))
        self.assertTrue(self.recent.fetching(self.room))
        self.assertIsNone(self.recent.replay(self.room))  # the read is not back yet
        self.recent.fetched(self.room, [row(1)])
        self.assertEqual(ids(self.recent.replay(self.room)), [1])
        self.assertFalse(self.recent.fetching(self.room))  # no need to read it again

    def test_messages_said_while_the_read_runs_are_added_after_its_rows(self):
        self.recent.fetching(self.room)
        self.say(7)
        self.say(8)
        self.recent.fetched(self.room, [row(4), row(5), row(6)])  # up to what had gone out
        self.assertEqual(ids(self.recent.replay(self.room)), [6, 7, 8])  # the last 3

    def test_an_older_read_answered_late_keeps_no_duplicate(self):
        # Two joiners' reads are both unanswered: the second one's rows hold
        # messages kept since the first one was asked for.
        self.recent.fetching(self.room)
        self.say(5)
        self.recent.fetching(self.room)
        self.say(6)
        self.recent.fetched(self.room, [row(4), row(5)])  # the second read, first back
        self.assertEqual(ids(self.recent.replay(self.room)), [4, 5, 6])
        self.recent.fetched(self.room, [row(4)])  # the first read: already complete
        self.assertEqual(ids(self.recent.replay(self.room)), [4, 5, 6])

    def test_an_empty_room(self):
        self.recent.fetching(self.room)
        self.recent.fetched(self.room, [])
        self.assertEqual(self.recent.replay(self.room), [])
        self.say(1)
        self.assertEqual(ids(self.recent.replay(self.room)), [1])

    def test_joiners_share_the_events_until_the_next_message(self):
        self.recent.fetching(self.room)
        self.recent.fetched(self.room, [row(1), row(2)])
        first = self.recent.replay(self.room)
        self.assertIs(self.recent.replay(self.room), first)
        self.assertEqual(first[0].encode("json"), history_event("Dev", 1, 1001.0, "bob",
                                                    "m1", False).encode("json"))
        self.assertTrue(first[0].fields["history"])
        self.say(3)
        then = self.recent.replay(self.room)
        self.assertEqual(ids(then), [1, 2, 3])
        self.assertIs(self.recent.event(self.room, row(2)), then[1])  # a read row shares it

    def test_rooms_apart_and_forgotten(self):
        other = FakeRoom("ops")
        for room in (self.room, other):
            self.recent.fetching(room)
            self.recent.fetched(room, [])
        self.say(1)
        self.say(2, room=other)
        self.assertEqual(ids(self.recent.replay(self.room)), [1])
        self.assertEqual(ids(self.recent.replay(other)), [2])
        self.recent.forget(other)
        self.assertIsNone(self.recent.replay(other))
        self.say(3, room=other)  # not kept: nobody will read it from here
        self.assertTrue(self.recent.fetching(other))

    def test_a_room_recreated_under_another_spelling_starts_afresh(self):
        self.recent.fetching(self.room)
        self.recent.fetched(self.room, [row(1)])
        self.assertIsNone(self.recent.replay(FakeRoom("DEV", key="dev")))

    def test_a_failed_read_leaves_it_unknown(self):
        self.recent.fetching(self.room)
        self.say(1)
        self.assertIsNone(self.recent.replay(self.room))
        self.assertTrue(self.recent.fetching(self.room))  # the next joiner reads again

    def test_messages_older_than_max_age_are_not_replayed(self):
        now = [1004.5]
        recent = RecentMessages(3, max_age=2.0, clock=lambda: now[0])
        recent.fetching(self.room)
        recent.fetched(self.room, [row(1), row(2), row(3)])  # said at 1001, 1002, 1003
        self.assertEqual(ids(recent.replay(self.room)), [3])
        now[0] = 1010.0
        self.assertEqual(recent.replay(self.room), [])

    def test_no_replay_no_memory(self):
        recent = RecentMessages(0)
        self.assertFalse(recent.fetching(self.room))
        recent.said(self.room, 1, 1.0, "bob", "hi")
        self.assertIsNone(recent.replay(self.room))
