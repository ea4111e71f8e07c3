"""The real service: a ``twistd -n chat`` process and clients over loopback TCP."""

from twisted.trial.unittest import SynchronousTestCase

from .support import ChatServer


class ServerTestCase(SynchronousTestCase):
    """Starts a fresh server per test; ``server_args`` are extra ``twistd chat`` options."""

    server_args = ()

    def setUp(self):
        self.server = ChatServer(*self.server_args).start()
        self.addCleanup(self.server.stop)

    def client(self, nick=None, json=True):
        c = self.server.client()
        self.addCleanup(c.close)
        if json:
            c.json_mode(nick)
        elif nick is not None:
            c.readline()
            c.send(f"/nick {nick}")
            c.expect_text(f"in ")
        return c


class BroadcastTests(ServerTestCase):
    def test_message_reaches_everybody_else(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        alice.send("hello, room")
        for c in (bob, carol):
            ev = c.expect_event("message", nick="alice")
            self.assertEqual(ev["text"], "hello, room")
            self.assertEqual(ev["room"], "lobby")
        # JSON mode echoes the authoritative copy to the sender.
        echo = alice.expect_event("message", nick="alice")
        self.assertIsInstance(echo["id"], int)

    def test_text_mode_sender_gets_no_echo(self):
        alice = self.client("alice", json=False)
        bob = self.client("bob", json=False)
        alice.expect_text("bob joined lobby")
        alice.send("hi bob")
        self.assertRegex(bob.expect_text("<alice>"), r"^\[\d\d:\d\d\] <alice> hi bob$")
        alice.send("/ping sync")
        self.assertEqual(alice.expect_text("pong"), "-- pong sync")
        self.assertFalse([line for line in alice.seen if "<alice>" in line])
