"""The cluster's parts without servers: the id order (Sequencer) driven by a
Clock and a database answered by hand, the ``--redis`` option, and what
a server keeps of the others' members (Members, fed publications by hand):
the cluster's counts and how long invitations last."""

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_chat.cluster import endpoint_description
from twisted_chat.cluster.members import DEAD_AFTER, Members
from twisted_chat.cluster.sequence import FETCH_LIMIT, GAP_WAIT, Sequencer
from twisted_chat.events import Event
from twisted_chat.history import room_message
from twisted_chat.hub import Hub
from twisted_chat.tap import Options

from .loopback import accept, receive, server


def record(text):
    return room_message("lobby", "lobby", "x", text, 0.0)


class SequencerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.out = []  # (id, "local" | text)
        self.fetches = []  # (after, limit, Deferred)
        self.seq = Sequencer(10, self.remote_out, self.fetch, self.clock)

    def remote_out(self, msg_id, rec):
        self.out.append((msg_id, rec[5]))

    def local_done(self, msg_id):
        self.out.append((msg_id, "local"))

    def fetch(self, after, limit):
        d = Deferred()
        self.fetches.append((after, limit, d))
        return d

    def test_in_order_at_once(self):
        self.seq.local(11, record("a"), self.local_done)
        self.seq.remote(12, record("b"))
        self.assertEqual(self.out, [(11, "local"), (12, "b")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_later_id_waits_for_the_lower_ones(self):
        self.seq.local(13, record("c"), self.local_done)
        self.seq.remote(12, record("b"))
        self.assertEqual(self.out, [])
        self.seq.remote(11, record("a"))
        self.assertEqual(self.out, [(11, "a"), (12, "b"), (13, "local")])

    def test_twice_goes_out_once(self):
        self.seq.remote(11, record("a"))
        self.seq.remote(11, record("a"))
        self.seq.remote(10, record("old"))
        self.seq.remote(13, record("c"))
        self.seq.remote(13, record("c"))
        self.seq.remote(12, record("b"))
        self.assertEqual(self.out, [(11, "a"), (12, "b"), (13, "c")])

    def test_a_hole_is_filled_from_the_database(self):
        self.seq.local(13, record("c"), self.local_done)
        self.clock.advance(GAP_WAIT - 0.01)
        self.assertEqual(self.fetches, [])
        self.clock.advance(0.02)
        (after, limit, d), = self.fetches
        self.assertEqual((after, limit), (10, FETCH_LIMIT))
        # 12 was pruned meanwhile: the database says 13 is the last id and
        # has rows for 11 and 13 (13: this server's own, already here).
        d.callback((13, [(11, record("a")), (13, record("c"))]))
        self.assertEqual(self.out, [(11, "a"), (13, "local")])
        self.assertEqual(self.seq.last, 13)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_hole_that_closes_by_itself_reads_nothing(self):
        self.seq.remote(12, record("b"))
        self.clock.advance(GAP_WAIT / 2)
        self.seq.remote(11, record("a"))
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.fetches, [])
        self.assertEqual(self.out, [(11, "a"), (12, "b")])

    def test_a_long_catch_up_reads_page_after_page(self):
        self.seq.catch_up()
        rows = [(11 + i, record(str(i))) for i in range(FETCH_LIMIT)]
        self.fetches[0][2].callback((11 + FETCH_LIMIT, rows))
        self.assertEqual(self.seq.last, 10 + FETCH_LIMIT)
        after, _, d = self.fetches[1]
        self.assertEqual(after, 10 + FETCH_LIMIT)
        d.callback((11 + FETCH_LIMIT, [(11 + FETCH_LIMIT, record("end"))]))
        self.assertEqual(self.out[-1], (11 + FETCH_LIMIT, "end"))
        self.assertEqual(len(self.out), FETCH_LIMIT + 1)

    def test_a_failed_read_is_tried_again(self):
        self.seq.fetch = lambda after, limit: fail(RuntimeError("database down"))
        self.seq.remote(12, record("b"))
        self.clock.advance(GAP_WAIT)
        self.seq.fetch = self.fetch
        self.clock.advance(GAP_WAIT)
        self.fetches[0][2].callback((12, [(11, record("a")), (12, record("b"))]))
        self.assertEqual(self.out, [(11, "a"), (12, "b")])
        self.flushLoggedErrors()


class OptionTests(SynchronousTestCase):
    def test_endpoint_spellings(self):
        self.assertEqual(endpoint_description("tcp:redis.lan:6380"), "tcp:redis.lan:6380")
        self.assertEqual(endpoint_description("redis.lan:6380"), "tcp:redis.lan:6380")
        self.assertEqual(endpoint_description("redis.lan"), "tcp:redis.lan:6379")
        self.assertEqual(endpoint_description("redis://redis.lan/"), "tcp:redis.lan:6379")
        self.assertEqual(endpoint_description("unix:/run/redis.sock"), "unix:/run/redis.sock")

    def test_redis_needs_postgresql(self):
        for db in ("chat.sqlite", ":memory:"):
            options = Options()
            with self.assertRaises(UsageError) as caught:
                options.parseOptions(["--db", db, "--redis", "tcp:127.0.0.1:6379"])
            self.assertIn("SQLite file only this process can use", str(caught.exception))

    def test_redis_with_postgresql(self):
        options = Options()
        options.parseOptions(["--db", "postgresql://chat@db.lan/chat", "--redis", "db.lan"])
        self.assertEqual(options["redis"], "tcp:db.lan:6379")
        self.assertIsNotNone(options["redis-endpoint"])


class PublisherTests(SynchronousTestCase):
    """The Redis publisher's bytes leave at once, not on the next reactor
    turn (a real loopback socket; no reactor runs)."""

    def setUp(self):
        try:
            from twisted_chat.cluster import redis
        except ImportError as e:
            raise SkipTest(f"txredisapi is not installed: {e}")
        import socket

        from twisted.internet.testing import MemoryReactor

        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.peer, sock, addr = accept(self, listener)

        class Link:
            def _lost(self, protocol, which):
                pass

        self.publisher = redis._Factory(Link(), redis._Publisher).buildProtocol(addr)
        self.publisher.callLater = Clock().callLater  # its reply timeout: not the reactor's
        self.transport = server(self, sock, addr, self.publisher, MemoryReactor())
        self.publisher.makeConnection(self.transport)

    def test_a_publication_is_sent_at_once(self):
        # (no reply comes: the connection is lost at the end)
        self.publisher.publish("twisted-chat:messages", "hello").addErrback(lambda f: None)
        expected = (b"*3\r\n$7\r\nPUBLISH\r\n$21\r\ntwisted-chat:messages\r\n"
                    b"$5\r\nhello\r\n")
        self.assertEqual(receive(self.peer, len(expected)), expected)
        # nothing left for the reactor's next turn
        self.assertEqual((self.transport._tempDataLen, self.transport.dataBuffer), (0, b""))

    def test_the_rest_is_the_transports(self):
        self.assertEqual(self.publisher.transport.getPeer(), self.transport.getPeer())
        self.assertIs(self.publisher.transport.socket, self.transport.socket)


class _Link:
    publisher = None  # no Redis: nicks are this server's word
    subscribed = True


def join(nick, room):
    return ["join", nick, room, room, ["join", {"room": room, "nick": nick}], "", {}]


def part(nick, room):
    return ["part", nick, room, ["part", {"room": room, "nick": nick}]]


class MembersTests(SynchronousTestCase):
    """One server's hub and what it hears of others (servers b and c)."""

    def setUp(self):
        self.t = 1000.0
        self.hub = Hub(clock=lambda: self.t)
        self.published = []
        self.cluster = Members(self.hub, "a" * 16, self.published.append, _Link(), Clock(),
                               now=lambda: self.t)

    def member(self, nick):
        m = self.hub.connect(lambda event: None)
        self.hub.set_nick(m, nick)
        self.hub.register(m)
        return m

    def rooms(self):
        """The cluster's rooms counted the long way: LUSERS's 254."""
        return len(set(self.hub.rooms) | {k for k, v in self.cluster.rooms_index.items() if v})

    def check(self, users, rooms):
        self.assertEqual((self.hub.users(), self.hub.rooms_formed()), (users, rooms))
        self.assertEqual(self.hub.rooms_formed(), self.rooms())

    def test_users_and_rooms_of_the_whole_cluster(self):
        self.check(0, 1)  # lobby
        ann = self.member("ann")
        self.check(1, 1)
        self.cluster.heard("b", [join("bob", "lobby"), join("bob", "dev")])
        self.check(2, 2)
        self.hub.join(ann, "dev")  # dev is here now too: still one dev
        self.check(2, 2)
        self.cluster.heard("b", [part("bob", "dev")])
        self.check(2, 2)
        self.hub.part(ann, "dev")  # nobody in dev anywhere
        self.check(2, 1)
        self.cluster.heard("b", [join("bob", "x")])
        self.cluster.heard("c", [["state", {"cy": [[["x", "x", ""], ["y", "y", "o"]], {}],
                                            "cz": [[], {}]}]])
        self.check(4, 3)
        self.assertEqual(len(self.cluster.servers), 2)
        self.cluster.heard("b", [["nick", "bob", "bobby", ["nick", {}]]])
        self.check(4, 3)
        self.hub.join(ann, "y")
        self.check(4, 3)
        self.assertEqual((self.hub.peak_count, self.hub.peak_users), (1, 4))
        # A member b had not told of (a guest renamed before its first join).
        self.cluster.heard("b", [["nick", "guestb-1", "dan", ["nick", {}]]])
        self.check(5, 3)
        self.assertEqual((self.hub.peak_count, self.hub.peak_users), (1, 5))
        # c falls silent: gone, and its members with it; y is ann's alone.
        self.t += DEAD_AFTER / 2
        self.cluster.heard("b", [["hb"]])
        self.t += DEAD_AFTER / 2 + 1
        self.cluster.heartbeat()
        self.assertEqual(list(self.cluster.servers), ["b"])
        self.check(3, 3)
        self.cluster.heard("b", [["quit", "bobby", ["quit", {}]]])
        self.check(2, 2)  # lobby, y
        self.assertEqual((self.hub.peak_count, self.hub.peak_users), (1, 5))

    def test_a_new_server_learns_the_nicks_given_up_from_the_first_answer(self):
        self.hub.departed_elsewhere("ann", "Ann", None)  # heard here, and by b
        self.t += 1
        self.cluster.subscribed()
        older = [["bob", "bob", None, None, 900.0], ["ann", "ann", "Ann", None, 999.5]]
        self.cluster.heard("b", [["state", {}, older]])
        self.assertEqual([entry[0] for entry in self.hub.departures()], ["bob", "ann"])
        self.assertEqual(self.hub.departed("bob"), [("bob", None, None, 900.0)])
        # Once: c's answer (with the same and more) is not taken.
        self.cluster.heard("c", [["state", {}, older + [["cy", "cy", None, None, 999.0]]]])
        self.assertEqual(self.hub.departed("cy"), [])
        self.assertEqual(len(self.hub.departures()), 2)

    def invite(self, nick, room):
        self.cluster.heard("b", [["act", "invite", room, nick, "bob", room]])

    def test_an_invitation_from_another_server_ends_when_the_room_empties_everywhere(self):
        ann = self.member("ann")
        self.cluster.heard("b", [join("bob", "den"), join("bea", "den")])
        self.invite("ann", "den")
        self.assertTrue(self.cluster.invited(ann, "den"))
        self.cluster.heard("b", [part("bob", "den")])  # bea is still in
        self.assertTrue(self.cluster.invited(ann, "den"))
        # A rename takes bea out of den's index and back: not an empty room.
        self.cluster.heard("b", [["nick", "bea", "beatrix", ["nick", {}]]])
        self.assertTrue(self.cluster.invited(ann, "den"))
        self.cluster.heard("b", [["quit", "beatrix", ["quit", {}]]])
        self.assertFalse(self.cluster.invited(ann, "den"))

    def test_an_invitation_lasts_while_a_member_is_here_or_elsewhere(self):
        ann, cid = self.member("ann"), self.member("cid")
        self.cluster.heard("b", [join("bob", "den")])
        self.invite("ann", "den")
        self.hub.join(cid, "den")
        self.cluster.heard("b", [part("bob", "den")])  # cid is in den here
        self.assertTrue(self.cluster.invited(ann, "den"))
        self.hub.part(cid, "den")
        self.assertFalse(self.cluster.invited(ann, "den"))
        # The same for a server's state that no longer has the room's last
        # member, and for a server gone.
        self.cluster.heard("b", [join("bob", "den")])
        self.invite("ann", "den")
        self.cluster.heard("b", [["state", {"bob": [[["den", "den", ""]], {}]}]])
        self.assertTrue(self.cluster.invited(ann, "den"))
        self.cluster.heard("b", [["state", {"bob": [[], {}]}]])
        self.assertFalse(self.cluster.invited(ann, "den"))
        self.cluster.heard("b", [join("bob", "den")])
        self.invite("ann", "den")
        self.t += DEAD_AFTER + 1
        self.cluster.heartbeat()
        self.assertFalse(self.cluster.invited(ann, "den"))

    def test_an_invitation_here_outlasts_the_rooms_last_member_here(self):
        ann, cid = self.member("ann"), self.member("cid")
        self.hub.join(ann, "den")  # its first member: its operator
        self.cluster.heard("b", [join("bob", "den")])
        self.hub.invite(ann, "cid", "den")
        self.hub.part(ann, "den")  # bob, elsewhere, is still in den
        self.assertNotIn("den", self.hub.rooms)
        self.assertTrue(self.cluster.invited(cid, "den"))
        self.cluster.heard("b", [part("bob", "den")])
        self.assertFalse(self.cluster.invited(cid, "den"))
