"""A server of a cluster dies (``kill -9``), end to end with the real
clients: two ``twistd chat`` servers on one PostgreSQL and one Redis,
behind a failover TCP front (tests/front.py, what HAProxy does for an
operator), and the real Tk window (tests/tk_driver.py) or the real browser
page (tests/browser.py) connected through it to the first server.

When that server is killed the client reconnects by itself, through the
front, to the other server; it is back in every room, under its own nick
once the dead server's claim on it has lapsed; what was said before the kill
is not shown twice (the replay on rejoin repeats it with the same ids) and
what is said after it is shown once.

Also: Redis that stops answering (SIGSTOP: its connections stay open but
silent, as after a network cut) is noticed by the servers' keepalive pings,
and nothing said meanwhile is lost.
"""

import json
import os
import re
import signal

from twisted.trial.unittest import SkipTest

from .browser import Browser, unavailable
from .front import Front
from .test_cluster_server import ClusterTestCase
from .test_web_browser import LOOPBACK, log, say, sign_in, wait_line
from .web_support import web_port
from .window_support import WindowClient, display


def count(state, fragment):
    """How many lines of the shown conversation hold ``fragment``."""
    return sum(fragment in line for line in state["lines"])


def plain(members):
    return sorted((m.lstrip("@+") for m in members), key=str.casefold)


class FailoverTestCase(ClusterTestCase):
    def pair(self, *args):
        """Two servers of one cluster."""
        return self.server(*args), self.server(*args)

    def front(self, *ports):
        front = Front(*ports)
        self.addCleanup(front.stop)
        return front


class WindowFailoverTests(FailoverTestCase):
    def test_kill_9_the_window_comes_back_on_the_other_server(self):
        screen = display(self)
        a, b = self.pair()
        front = self.front(a.port, b.port)
        bob = self.client(b, "bob")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")

        w = WindowClient(screen, "--port", str(front.port), "--nick", "alice")
        self.addCleanup(w.close)
        w.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        w.say("/join dev")
        w.wait_for(lambda s: s["room"] == "#dev" and plain(s["members"]) == ["alice", "bob"],
                   "alice and bob in dev")
        self.assertEqual(bob.expect_event("join", room="dev")["nick"], "alice")
        bob.send("/say dev said in dev before", "/say lobby said in lobby before")
        w.say("mine, before")
        self.assertEqual(bob.expect_event("message", room="dev", nick="alice")["text"],
                         "mine, before")
        state = w.wait_for(lambda s: count(s, "<bob> said in dev before") == 1
                           and count(s, "<alice> mine, before") == 1, "dev's lines")
        # lobby's line is unread (dev is shown).
        self.assertEqual(state["conversations"], ["#lobby (1)", "#dev"])

        a.stop(signal.SIGKILL)
        # The window was on a: it loses its connection, and through the
        # front reaches b, back in both rooms (dev still shown).
        w.wait_for(lambda s: any("disconnected" in line for line in s["lines"]),
                   "the connection lost")
        w.wait_for(lambda s: s["status"].startswith("Connected as ")
                   and s["status"].endswith(" in dev") and s["room"] == "#dev", "back in dev",
                   timeout=30)
        # A guest for now: a still holds alice.
        self.assertTrue(bob.expect_event("join", room="dev", timeout=30)["nick"]
                        .startswith("guest"))
        # The replay of lobby's history on rejoin made no second unread line.
        self.assertEqual(w.dump()["conversations"], ["#lobby (1)", "#dev"])
        bob.send("/say dev said in dev after")
        state = w.wait_for(lambda s: count(s, "<bob> said in dev after") == 1, "the new line")
        # The replay on rejoin repeated what was shown already: not shown twice.
        self.assertEqual(count(state, "said in dev before"), 1, state["lines"])
        self.assertEqual(count(state, "mine, before"), 1, state["lines"])

        # b sees a gone (its members quit, "server gone"); the nick the dead
        # server held is free then, and the window takes it back.
        state = w.wait_for(lambda s: s["status"] == "Connected as alice in dev"
                           and plain(s["members"]) == ["alice", "bob"],
                           "alice again, in dev", timeout=45)
        self.assertEqual(count(state, "said in dev after"), 1, state["lines"])
        self.assertEqual(count(state, "said in dev before"), 1, state["lines"])
        w.say("mine, after")
        self.assertEqual(bob.expect_event("message", room="dev", nick="alice")["text"],
                         "mine, after")
        w.say("/join lobby")  # a room we are in: shown
        state = w.wait_for(lambda s: s["room"] == "#lobby"
                           and plain(s["members"]) == ["alice", "bob"], "lobby shown")
        self.assertEqual(count(state, "said in lobby before"), 1, state["lines"])
        self.assertNotIn("Traceback", w.errors())


class BrowserFailoverTests(FailoverTestCase):
    def test_kill_9_the_page_comes_back_on_the_other_server(self):
        why = unavailable()
        if why:
            raise SkipTest(why)
        a, b = self.pair("--web", LOOPBACK)
        front = self.front(web_port(a), web_port(b))
        browser = Browser()
        self.addCleanup(browser.close)
        bob = self.client(b, "bob")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")

        def scenario():
            page = browser.page(f"http://127.0.0.1:{front.port}/")
            sign_in(page, "alice")
            say(page, "/join dev")
            members = page.get_by_role("complementary", name="Members")
            members.get_by_text("bob", exact=True).wait_for()
            self.assertEqual(bob.expect_event("join", room="dev")["nick"], "alice")
            bob.send("/say dev said in dev before", "/say lobby said in lobby before")
            wait_line(page, "said in dev before")
            say(page, "mine, before")
            self.assertEqual(bob.expect_event("message", room="dev", nick="alice")["text"],
                             "mine, before")
            wait_line(page, "mine, before")

            a.stop(signal.SIGKILL)
            page.get_by_text(re.compile("reconnecting")).wait_for()
            # Back through the front on b, in dev (still shown) and lobby;
            # under another nick for now (a still holds alice).
            joined = log(page).locator(".line", has_text="you joined #dev")
            joined.nth(1).wait_for(timeout=30_000)
            self.assertEqual(bob.expect_event("join", room="dev")["nick"], "alice_")
            bob.send("/say dev said in dev after")
            wait_line(page, "said in dev after")
            self.assertEqual(log(page).locator(".line", has_text="said in dev after").count(), 1)
            self.assertEqual(log(page).locator(".line", has_text="said in dev before").count(), 1)
            self.assertEqual(log(page).locator(".line", has_text="mine, before").count(), 1)
            # Once b has seen a gone, the nick is free: the page takes it back.
            self.assertEqual(bob.expect_event("quit", nick="alice", timeout=30)["reason"],
                             "server gone")
            self.assertEqual(bob.expect_event("nick", old="alice_", timeout=10)["new"], "alice")
            wait_line(page, "alice_ is now known as alice")
            members.get_by_text("alice", exact=True).wait_for()
            self.assertEqual(members.get_by_text("alice_", exact=True).count(), 0)
            say(page, "mine, after")
            self.assertEqual(bob.expect_event("message", room="dev", nick="alice")["text"],
                             "mine, after")
            wait_line(page, "mine, after")
            self.assertEqual(log(page).locator(".line", has_text="said in dev before").count(), 1)
            self.assertEqual(log(page).locator(".line", has_text="said in dev after").count(), 1)
            rooms = page.get_by_role("navigation", name="Rooms")
            rooms.get_by_role("button", name=re.compile(r"^#?lobby")).click()
            wait_line(page, "said in lobby before")
            self.assertEqual(
                log(page).locator(".line", has_text="said in lobby before").count(), 1)

        browser.run(scenario)
        self.assertEqual(browser.errors, [], "JavaScript errors in the page")


class RedisSilenceTests(FailoverTestCase):
    def test_a_silent_redis_is_noticed_and_nothing_is_lost(self):
        a, b = self.pair()
        alice, bob = self.client(a, "alice"), self.client(b, "bob")
        alice.expect_event("join", nick="bob")
        alice.send("before")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "before")
        # Stopped, Redis keeps its sockets open and answers nothing: to the
        # servers a silent cut. Their pings go unanswered; they drop the
        # connections and read what the others say from the database.
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            for server in (a, b):
                server.wait_for_log("redis: subscription lost", timeout=20)
            alice.send("while redis is silent")
            bob.send("also while redis is silent")
            self.assertEqual(bob.expect_event("message", nick="alice")["text"],
                             "while redis is silent")
            self.assertEqual(alice.expect_event("message", nick="bob")["text"],
                             "also while redis is silent")
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        for server in (a, b):
            server.wait_for_log("redis: subscribed", timeout=20)
        alice.send("after")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "after")
        # Nothing twice, nobody judged gone.
        for c in (alice, bob):
            texts = [ev["text"] for ev in map(_json, c.seen) if ev.get("type") == "message"
                     and not ev.get("history")]
            self.assertEqual(len(texts), len(set(texts)), texts)
            self.assertEqual([ev for ev in map(_json, c.seen) if ev.get("type") == "quit"], [])


def _json(line):
    try:
        return json.loads(line)
    except ValueError:
        return {}
