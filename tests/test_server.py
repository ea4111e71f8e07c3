"""The real service: a ``twistd -n chat`` process and clients over loopback TCP."""

import json

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
        alice.expect_text("#lobby -- bob joined")
        alice.send("hi bob")
        self.assertRegex(bob.expect_text("<alice>"), r"^\[\d\d:\d\d\] #lobby <alice> hi bob$")
        alice.send("/ping sync")
        self.assertEqual(alice.expect_text("pong"), "-- pong sync")
        self.assertFalse([line for line in alice.seen if "<alice>" in line])


class RegistrationTests(ServerTestCase):
    def test_welcome_then_guest_registration_after_grace(self):
        watcher = self.client("watcher")
        lurker = self.server.client()
        self.addCleanup(lurker.close)
        self.assertRegex(lurker.readline(), r"^-- welcome to twisted-chat \(twisted-chat [\d.]+, protocol 2\); "
                                            r"you are guest\d+$")
        join = watcher.expect_event("join", timeout=10)
        self.assertTrue(join["nick"].startswith("guest"))
        # The silent lurker still receives the room's messages.
        watcher.send("anyone there?")
        self.assertIn("<watcher> anyone there?", lurker.expect_text("anyone there?"))

    def test_nick_taken_case_and_width_insensitively(self):
        self.client("Alice")
        bob = self.client("bob")
        for attempt in ("alice", "ALICE", "Ａlice"):
            bob.send(f"/nick {attempt}")
            err = bob.expect_event("error")
            self.assertEqual(err["code"], "nick-taken", attempt)

    def test_nick_change_seen_by_room_and_self(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.expect_event("join", nick="bob")
        bob.send("/nick robert")
        for c in (alice, bob):
            ev = c.expect_event("nick")
            self.assertEqual((ev["old"], ev["new"]), ("bob", "robert"))
        bob.send("/nick 9lives")
        self.assertEqual(bob.expect_event("error")["code"], "nick-invalid")


class RoomTests(ServerTestCase):
    def test_join_keeps_other_rooms_and_part_leaves_one(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.expect_event("join", nick="bob")
        bob.send("/join #dev")
        bob.expect_event("join", room="dev", nick="bob")
        self.assertEqual(bob.expect_event("names")["nicks"], ["bob"])
        # Still in lobby: alice's line reaches bob; bob's plain line goes to
        # dev, his active room, and /say addresses lobby.
        alice.send("to lobby")
        self.assertEqual(bob.expect_event("message", room="lobby")["text"], "to lobby")
        bob.send("/say lobby from bob", "/part lobby see you")
        self.assertEqual(alice.expect_event("message", nick="bob")["text"], "from bob")
        part = alice.expect_event("part")
        self.assertEqual((part["room"], part["nick"], part["reason"]),
                         ("lobby", "bob", "left: see you"))
        self.assertEqual(bob.expect_event("part")["room"], "lobby")  # its own part too
        # Messages stay in their room.
        alice.send("lobby only")
        bob.send("dev only")
        self.assertEqual(bob.expect_event("message")["text"], "dev only")
        self.assertEqual(alice.expect_event("message", nick="alice")["text"], "lobby only")
        alice.send("/ping sync")
        alice.expect_event("pong")
        self.assertNotIn("dev only", "\n".join(alice.seen))

    def test_rooms_are_case_insensitive(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("/join Dev")
        alice.expect_event("names", room="Dev")
        bob.send("/join #DEV")
        self.assertEqual(bob.expect_event("names")["nicks"], ["alice", "bob"])

    def test_who_and_rooms(self):
        alice, bob = self.client("alice"), self.client("bob")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        alice.send("/who")
        self.assertEqual(alice.expect_event("names"), {"type": "names", "room": "lobby",
                                                       "nicks": ["alice", "bob"], "ops": [],
                                                       "voiced": []})
        alice.send("/who #dev")
        self.assertEqual(alice.expect_event("names")["nicks"], ["bob"])
        alice.send("/rooms")
        self.assertEqual(alice.expect_event("rooms")["rooms"],
                         [{"name": "dev", "members": 1}, {"name": "lobby", "members": 2}])
        alice.send("/join bad!room")
        self.assertEqual(alice.expect_event("error")["code"], "room-invalid")


class MessageTests(ServerTestCase):
    def test_private_message(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        alice.send("/msg BOB psst, bob")
        ev = bob.expect_event("private")
        self.assertEqual((ev["from"], ev["to"], ev["text"]), ("alice", "bob", "psst, bob"))
        self.assertEqual(alice.expect_event("private")["id"], ev["id"])  # JSON echo
        carol.send("/ping sync")
        carol.expect_event("pong")
        self.assertNotIn("psst", "\n".join(carol.seen))
        alice.send("/msg nobody hello")
        self.assertEqual(alice.expect_event("error")["code"], "no-such-nick")

    def test_action_and_ids_increase(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("first", "/me waves", "//literal slash")
        got = [bob.expect_event("message") for _ in range(3)]
        self.assertEqual([e["text"] for e in got], ["first", "waves", "/literal slash"])
        self.assertEqual([e.get("action", False) for e in got], [False, True, False])
        ids = [e["id"] for e in got]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertRegex(got[0]["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_text_mode_renderings(self):
        alice = self.client("alice", json=False)
        bob = self.client("bob", json=False)
        alice.expect_text("#lobby -- bob joined")
        bob.send("/me waves", "/msg alice psst", "/nick robert")
        self.assertRegex(alice.expect_text("waves"), r"^\[\d\d:\d\d\] #lobby \* bob waves$")
        self.assertRegex(alice.expect_text("psst"), r"^\[\d\d:\d\d\] \*bob\* psst$")
        self.assertRegex(alice.expect_text("robert"), r"-- bob is now known as robert$")
        alice.send("/nick robert")
        self.assertTrue(alice.expect_text("!!").startswith("!! nick-taken: "))
        alice.send("/rooms")
        self.assertEqual(alice.expect_text("rooms"), "-- rooms: lobby (2)")

    def test_bad_input_keeps_everyone_connected(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send_raw(b"\xff\xfe\r\n" + b"x" * 5000 + b"\r\n/frob\r\n/mode\r\nstill here\r\n")
        codes = [alice.expect_event("error")["code"] for _ in range(4)]
        self.assertEqual(codes, ["bad-encoding", "line-too-long", "unknown-command", "usage"])
        self.assertEqual(bob.expect_event("message")["text"], "still here")

    def test_quit_and_disconnect_reach_each_neighbour_once(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        for c in (alice, bob, carol):  # all three share two rooms
            c.send("/join dev")
            c.expect_event("names", room="dev")
        bob.send("/quit see you")
        self.assertEqual(bob.expect_event("bye")["type"], "bye")
        self.assertTrue(bob.closed())
        self.assertEqual(alice.expect_event("quit", nick="bob")["reason"], "quit: see you")
        carol.close()
        self.assertEqual(alice.expect_event("quit", nick="carol")["reason"], "disconnected")
        alice.send("/ping sync")
        alice.expect_event("pong")
        seen = [json.loads(line) for line in alice.seen if line.startswith("{")]
        self.assertEqual([e["nick"] for e in seen if e["type"] in ("quit", "part")],
                         ["bob", "carol"])
        alice.send("/ping abc")
        self.assertEqual(alice.expect_event("pong"), {"type": "pong", "token": "abc"})
        alice.send("/ping")
        self.assertEqual(alice.expect_event("pong"), {"type": "pong", "token": ""})


class OptionTests(ServerTestCase):
    server_args = ("--motd", "welcome, team", "--default-room", "#general", "--max-line", "100")

    def test_options_apply(self):
        alice = self.client("alice")
        self.assertIn("-- welcome, team", alice.seen)  # the text welcome, before /mode json
        welcome = next(json.loads(line) for line in alice.seen if line.startswith("{"))
        self.assertEqual(welcome["motd"], "welcome, team")
        alice.send("/who")
        self.assertEqual(alice.expect_event("names")["room"], "general")
        alice.send("y" * 101)
        self.assertEqual(alice.expect_event("error")["code"], "line-too-long")


class HelpTests(ServerTestCase):
    def test_help_lists_every_command(self):
        alice = self.client("alice", json=False)
        alice.send("/help", "/ping done")
        alice.expect_text("pong done")
        text = "\n".join(alice.seen)
        for command in ("/nick", "/join", "/who", "/rooms", "/msg", "/me", "/mode", "/ping",
                        "/quit", "/help"):
            self.assertIn(f"-- {command}", text)
