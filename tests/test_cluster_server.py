"""Several ``twistd chat`` processes as one chat (``--redis``, issue 15), end
to end: real servers on a real PostgreSQL (tests/pg_support) and a real
Redis (tests/redis_support), line-protocol clients on each server.

A room's messages carry the same ids and arrive in the same order on every
server; Redis restarted in the middle of traffic delays delivery but every
acknowledged message reaches every member exactly once; and with an SQLite
``--db`` a server refuses to join a cluster, saying why."""

import json
import shutil
import signal
import tempfile
import threading
import time

from twisted.trial.unittest import SkipTest

from .pg_support import PostgresTestCase
from .redis_support import RedisServer, why_not
from .support import ChatServer
from .test_history_server import HistoryServerTestCase


class ClusterTestCase(PostgresTestCase):
    unlimited = HistoryServerTestCase.unlimited

    def setUp(self):
        reason = why_not()
        if reason:
            raise SkipTest(reason)
        super().setUp()
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.destroy)

    def server(self, *args):
        server = ChatServer(*self.unlimited, "--db", self.url, "--redis", self.redis.endpoint,
                            *args).start()
        self.addCleanup(server.stop)
        server.logged("redis: subscribed")
        return server

    def client(self, server, nick):
        c = server.client()
        self.addCleanup(c.close)
        c.json_mode(nick)
        return c

    def eventually(self, client, command, type, condition, timeout=10):
        """Send ``command`` until its answer (an event of ``type``) meets
        ``condition``."""
        deadline = time.monotonic() + timeout
        while True:
            client.send(command)
            ev = client.expect_event(type)
            if condition(ev):
                return ev
            self.assertLess(time.monotonic(), deadline, f"never: {ev}")
            time.sleep(0.05)

    def messages(self, client, count, room="lobby"):
        """The next ``count`` live messages of ``room`` the client receives:
        (id, nick, text) in the order received."""
        got = []
        while len(got) < count:
            ev = client.expect_event("message", room=room)
            if not ev.get("history"):
                got.append((ev["id"], ev["nick"], ev["text"]))
        return got


class CrossServerTests(ClusterTestCase):
    def test_messages_both_ways_same_ids_same_order(self):
        a, b = self.server(), self.server()
        alice, bob = self.client(a, "alice"), self.client(b, "bob")
        alice.send("hello from a")
        seen_b = self.messages(bob, 1)
        seen_a = self.messages(alice, 1)  # alice's own acknowledgement
        self.assertEqual(seen_a, seen_b)
        self.assertEqual(seen_b[0][1:], ("alice", "hello from a"))
        bob.send("hello from b")
        self.assertEqual(self.messages(alice, 1), self.messages(bob, 1))

        # Both at once, many: every member sees the same ids in the same
        # (increasing) order, whichever server each message was said on.
        count = 200
        senders = [threading.Thread(target=c.send, args=[f"{c_name} {i}" for i in range(count)])
                   for c, c_name in ((alice, "a"), (bob, "b"))]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        on_a, on_b = self.messages(alice, 2 * count), self.messages(bob, 2 * count)
        self.assertEqual(on_a, on_b)
        ids = [i for i, _, _ in on_a]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual({text for _, _, text in on_a},
                         {f"{n} {i}" for n in "ab" for i in range(count)})
        # A third server started later replays the same history.
        carol = self.client(self.server(), "carol")
        replay = []
        while True:
            ev = carol.event()
            if ev["type"] == "history-end":
                break
            if ev["type"] == "message":
                replay.append((ev["id"], ev["nick"], ev["text"]))
        self.assertEqual(replay, on_a[-len(replay):])

    def test_rooms_are_shared(self):
        a, b = self.server(), self.server()
        alice, bob = self.client(a, "alice"), self.client(b, "bob")
        for c in (alice, bob):
            c.send("/join dev")
            c.expect_event("names", room="dev")
        bob.send("/say dev in dev")
        self.assertEqual(self.messages(alice, 1, "dev"), self.messages(bob, 1, "dev"))


class RedisRestartTests(ClusterTestCase):
    def test_every_acknowledged_message_reaches_every_member_exactly_once(self):
        a, b = self.server(), self.server()
        alice, bob = self.client(a, "alice"), self.client(b, "bob")
        carol = self.client(b, "carol")  # a listener on b
        dave = self.client(a, "dave")  # and one on a
        stop = threading.Event()
        acked = {"alice": [], "bob": []}

        def talk(client, name):
            i = 0
            while not stop.is_set():
                client.send(f"{name} {i}")
                # The acknowledgement: the message came back with its id.
                ev = client.expect_event("message", nick=name, text=f"{name} {i}", timeout=30)
                acked[name].append(ev["id"])
                i += 1

        talkers = [threading.Thread(target=talk, args=(alice, "alice")),
                   threading.Thread(target=talk, args=(bob, "bob"))]
        for t in talkers:
            t.start()
        try:
            self.wait_for(lambda: min(len(v) for v in acked.values()) >= 20)
            self.redis.stop()
            before = {k: len(v) for k, v in acked.items()}
            # Without Redis both servers still take messages (the database
            # is the truth); they reach the other server by catching up.
            self.wait_for(lambda: all(len(acked[k]) >= before[k] + 10 for k in acked))
            self.redis.start()
            a.wait_for_log("redis: subscribed", timeout=30)
            b.wait_for_log("redis: subscribed", timeout=30)
            more = {k: len(v) for k, v in acked.items()}
            self.wait_for(lambda: all(len(acked[k]) >= more[k] + 20 for k in acked))
        finally:
            stop.set()
            for t in talkers:
                t.join(60)
        every = sorted(acked["alice"] + acked["bob"])
        self.assertEqual(len(set(every)), len(every))
        last = every[-1]
        for listener in (carol, dave):
            got = []
            while not got or got[-1][0] < last:
                got += self.messages(listener, 1)
            ids = [i for i, _, _ in got]
            self.assertEqual(ids, sorted(set(ids)), "out of order or twice")
            self.assertEqual(set(every) - set(ids), set(), "acknowledged but never delivered")
            self.assertEqual(listener.quiet(0.5), [])  # nothing more, no repeat

    def wait_for(self, condition, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, "timed out")
            time.sleep(0.05)


class StartTests(ClusterTestCase):
    def test_redis_with_sqlite_is_refused(self):
        self.dir = tempfile.mkdtemp(prefix="chat-cluster-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        result = HistoryServerTestCase.run_twistd(self, "--redis", self.redis.endpoint)
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("--redis makes this server one of a cluster", output)
        self.assertIn("SQLite file", output)
        self.assertNotIn("Traceback", output)


class MembershipTests(ClusterTestCase):
    def test_names_who_rooms_and_presence_are_cluster_wide(self):
        a, b = self.server(), self.server()
        alice = self.client(a, "alice")
        bob = self.client(b, "bob")
        # bob's join reached a (it came after alice was there).
        alice.expect_event("join", room="lobby", nick="bob")
        alice.send("/who")
        self.assertEqual(sorted(alice.expect_event("names", room="lobby")["nicks"]),
                         ["alice", "bob"])
        # What happens on a reaches b a moment later (a publication).
        self.eventually(bob, "/who lobby", "names",
                        lambda ev: sorted(ev["nicks"]) == ["alice", "bob"])
        alice.send("/join dev")
        alice.expect_event("names", room="dev")
        self.eventually(bob, "/rooms", "rooms", lambda ev: {
            r["name"]: r["members"] for r in ev["rooms"]} == {"dev": 1, "lobby": 2})
        bob.send("/join dev")
        self.assertEqual(sorted(bob.expect_event("names", room="dev")["nicks"]),
                         ["alice", "bob"])
        alice.expect_event("join", room="dev", nick="bob")
        bob.send("/nick robert")
        ev = alice.expect_event("nick", old="bob")
        self.assertEqual(ev["new"], "robert")
        bob.send("/part dev bye")
        self.assertEqual(alice.expect_event("part", room="dev")["nick"], "robert")
        # Private messages cross too.
        alice.send("/msg robert psst")
        got = bob.expect_event("private")
        self.assertEqual((got["from"], got["to"], got["text"]), ("alice", "robert", "psst"))
        bob.close()
        self.assertEqual(alice.expect_event("quit")["nick"], "robert")
        alice.send("/msg robert hello?")
        self.assertEqual(alice.expect_event("error")["code"], "no-such-nick")

    def test_a_nick_is_unique_across_servers(self):
        a, b = self.server(), self.server()
        alice = self.client(a, "alice")
        other = b.client()
        self.addCleanup(other.close)
        other.json_mode()
        other.send("/nick ALICE")
        self.assertEqual(other.expect_event("error")["code"], "nick-taken")
        # A race: one client on each server asks for the same nick at once,
        # many times over; each time exactly one of them gets it.
        for round in range(10):
            nick = f"racer{round}"
            pair = [a.client(), b.client()]
            for c in pair:
                self.addCleanup(c.close)
                c.json_mode()
            for c in pair:
                c.send(f"/nick {nick}")
            outcomes = []
            for c in pair:
                ev = json.loads(c.expect(lambda line: '"nick-taken"' in line
                                         or '"names"' in line))
                outcomes.append(ev["type"])
            self.assertEqual(sorted(outcomes), ["error", "names"], f"round {round}")

    def test_a_join_sent_with_a_nick_joins_under_that_nick(self):
        """A /nick waits for its claim in Redis, and so do the lines after
        it: a client that sends /nick and /join at once (the Tk client
        does) joins under its nick, as on a single server, and not as its
        guest nick renamed a moment later."""
        a, b = self.server(), self.server()
        here, there = self.client(a, "here"), self.client(b, "there")
        for watcher in (here, there):
            watcher.send("/join dev")
            watcher.expect_event("names", room="dev")

        def presence_until_join_of(watcher, nick):
            """The joins of dev and the renames the watcher gets, up to
            ``nick``'s join of dev."""
            seen = []

            def record(line):
                ev = json.loads(line)
                if ev.get("type") == "nick" or (ev.get("type") == "join"
                                                and ev.get("room") == "dev"):
                    seen.append(ev)
                return ev.get("type") == "join" and ev.get("room") == "dev" \
                    and ev.get("nick") == nick
            watcher.expect(record)
            return seen

        for round in range(3):
            newcomer = a.client()
            self.addCleanup(newcomer.close)
            newcomer.json_mode()
            newbie = f"newbie{round}"
            newcomer.send(f"/nick {newbie}", "/join dev")  # one write
            for watcher in (here, there):
                for ev in presence_until_join_of(watcher, newbie):
                    # (here and there may still see each other join dev)
                    self.assertIn(ev.get("nick"), (newbie, "here", "there"), ev)
                    self.assertEqual(ev["type"], "join", ev)
            names = newcomer.expect_event("names", room="dev")
            self.assertIn(f"newbie{round}", names["nicks"])
        # A nick held on the other server: refused, and the line after it
        # still runs (under the guest nick it has).
        late = a.client()
        self.addCleanup(late.close)
        late.json_mode()
        late.send("/nick there", "/ping after")
        self.assertEqual(late.expect_event("error")["code"], "nick-taken")
        late.expect_event("pong")

    def test_kill_9_of_a_server_its_members_leave_the_others(self):
        a, b = self.server(), self.server()
        alice = self.client(a, "alice")
        self.client(b, "bob")
        alice.expect_event("join", nick="bob")
        b.stop(signal.SIGKILL)
        started = time.monotonic()
        quit = alice.expect_event("quit", nick="bob", timeout=40)
        self.assertLess(time.monotonic() - started, 30)
        self.assertEqual(quit["reason"], "server gone")
        alice.send("/who")
        self.assertEqual(alice.expect_event("names", room="lobby")["nicks"], ["alice"])
        # Its nick is free again (its server's claim died with it).
        again = a.client()
        self.addCleanup(again.close)
        again.json_mode()
        again.send("/nick bob")
        self.assertEqual(again.expect_event("nick", new="bob")["new"], "bob")


class ModerationTests(ClusterTestCase):
    def test_topics_flags_operators_kicks_and_bans_across_servers(self):
        a, b = self.server(), self.server()
        alice = self.client(a, "alice")
        bob = self.client(b, "bob")
        alice.send("/join dev")  # the first in dev: its operator
        alice.expect_event("names", room="dev")
        self.eventually(bob, "/who dev", "names", lambda ev: ev["nicks"] == ["alice"])
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        alice.expect_event("join", room="dev", nick="bob")

        alice.send("/topic dev set on a")
        topic = bob.expect_event("topic", room="dev")
        self.assertEqual((topic["topic"], topic["by"]), ("set on a", "alice"))
        bob.send("/topic dev")  # b holds it now, not only its event
        self.assertEqual(bob.expect_event("topic", room="dev")["topic"], "set on a")
        bob.send("/topic dev from b")
        self.assertEqual(bob.expect_event("error")["code"], "not-operator")  # locked

        alice.send("/set dev moderated on")
        mode = bob.expect_event("mode", room="dev", mode="moderated")
        self.assertEqual((mode["on"], mode["by"]), (True, "alice"))
        bob.send("/say dev hush")
        self.assertEqual(bob.expect_event("error")["code"], "moderated")

        # An operator on a makes bob (on b) an operator: b does it.
        alice.send("/op dev bob")
        self.assertEqual(bob.expect_event("mode", room="dev", mode="op")["nick"], "bob")
        self.assertEqual(alice.expect_event("mode", room="dev", mode="op")["nick"], "bob")
        bob.send("/say dev now I may")
        self.assertEqual(alice.expect_event("message", room="dev")["text"], "now I may")

        # Kicks, both ways.
        carol = self.client(b, "carol")
        carol.send("/join dev")
        carol.expect_event("names", room="dev")
        alice.expect_event("join", room="dev", nick="carol")
        alice.send("/kick dev carol out")
        kick = carol.expect_event("kick", room="dev")
        self.assertEqual((kick["nick"], kick["by"], kick["reason"]), ("carol", "alice", "out"))
        self.assertEqual(alice.expect_event("kick", room="dev")["nick"], "carol")
        self.eventually(alice, "/who dev", "names",
                        lambda ev: sorted(ev["nicks"]) == ["alice", "bob"])

        # A ban set on a for a member of b holds on b (and everywhere).
        dave = self.client(b, "dave")
        dave.send("/join dev")
        dave.expect_event("names", room="dev")
        self.eventually(alice, "/who dev", "names", lambda ev: "dave" in ev["nicks"])
        alice.send("/ban dev dave")
        self.assertEqual(alice.expect_event("mode", room="dev", mode="ban")["nick"], "dave")
        dave.send("/part dev")
        dave.expect_event("part", room="dev")
        dave.send("/join dev")
        self.assertEqual(dave.expect_event("error")["code"], "banned")

        bob.send("/kick dev alice bye")
        kick = alice.expect_event("kick", room="dev")
        self.assertEqual((kick["nick"], kick["by"]), ("alice", "bob"))
