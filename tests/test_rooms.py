"""Protocol v2 over real sockets: several rooms per connection, topics,
operators and moderation, against a real ``twistd chat`` process."""

import json
import subprocess

from .support import ChatServer, twistd_command
from .test_accounts import AccountServerTestCase
from .test_server import ServerTestCase


def codes(client, n):
    return [client.expect_event("error")["code"] for _ in range(n)]


class SeveralRoomsTests(ServerTestCase):
    server_args = ("--max-rooms", "3")

    def test_active_room_say_describe_and_max_rooms(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("/join dev", "/join ops")
        alice.expect_event("names", room="ops")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        # Plain lines go to alice's active room (ops, the last joined).
        alice.send("to ops", "/say dev to dev", "/describe dev waves", "/say lobby to lobby")
        got = [bob.expect_event("message", nick="alice") for _ in range(3)]
        self.assertEqual([(e["room"], e["text"], e.get("action", False)) for e in got],
                         [("dev", "to dev", False), ("dev", "waves", True),
                          ("lobby", "to lobby", False)])
        # /join of a room one is in makes it active and answers names again.
        alice.send("/join dev")
        self.assertEqual(alice.expect_event("names", room="dev")["nicks"], ["alice", "bob"])
        alice.send("plain again")
        self.assertEqual(bob.expect_event("message", nick="alice")["room"], "dev")
        alice.send("/join four")
        self.assertEqual(alice.expect_event("error")["code"], "too-many-rooms")
        # Errors of the new commands; the connection stays.
        bob.send("/say ops hello", "/say nowhere hi", "/part ops", "/say", "/part bad!room")
        self.assertEqual(codes(bob, 5),
                         ["not-in-room", "no-such-room", "not-in-room", "usage", "room-invalid"])
        bob.send("/ping ok")
        bob.expect_event("pong")
        alice.send("/ping sync")
        alice.expect_event("pong")
        self.assertNotIn("hello", "\n".join(alice.seen))

    def test_part_of_every_room_then_plain_lines_are_refused(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("/part", "lost words")
        self.assertEqual(alice.expect_event("part")["room"], "lobby")
        self.assertEqual(alice.expect_event("error")["code"], "not-in-room")
        alice.send("/join lobby", "found again")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "found again")
        self.assertNotIn("lost words", "\n".join(bob.seen))

    def test_nick_change_and_quit_reach_each_neighbour_once(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        for c in (alice, bob):
            c.send("/join dev", "/join ops")
            c.expect_event("names", room="ops")
        alice.send("/nick alicia", "/quit bye")
        bob.expect_event("quit", nick="alicia")
        carol.expect_event("quit", nick="alicia")
        for c in (bob, carol):
            c.send("/ping sync")
            c.expect_event("pong")
            events = [json.loads(line) for line in c.seen if line.startswith("{")]
            self.assertEqual([e["type"] for e in events if e["type"] in ("nick", "quit")
                              and e.get("new", e.get("nick")) == "alicia"], ["nick", "quit"])

    def test_text_mode_says_each_lines_room(self):
        alice = self.client("alice", json=False)
        bob = self.client("bob")
        alice.send("/join dev")
        alice.expect_text("-- in #dev: @alice")
        bob.send("/join dev", "/say dev hi dev", "/say lobby hi lobby")
        self.assertRegex(alice.expect_text("hi dev"), r"^\[\d\d:\d\d\] #dev <bob> hi dev$")
        self.assertRegex(alice.expect_text("hi lobby"),
                         r"^\[\d\d:\d\d\] #lobby <bob> hi lobby$")

    def test_history_of_any_room_one_is_in(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("/join dev", "/say dev d1", "/say dev d2", "/say lobby l1")
        alice.expect_event("message", text="l1")
        alice.send("/history dev 1", "/history lobby")
        self.assertEqual(alice.expect_event("message", history=True)["text"], "d2")
        self.assertEqual(alice.expect_event("history-end")["room"], "dev")
        self.assertEqual(alice.expect_event("message", history=True)["text"], "l1")
        bob.send("/history dev")
        self.assertEqual(bob.expect_event("error")["code"], "not-in-room")


class TopicAndModerationTests(ServerTestCase):
    def test_topic_operators_kick_ban_flags(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        alice.send("/join dev")
        names = alice.expect_event("names", room="dev")
        self.assertEqual(names["ops"], ["alice"])  # the first to come runs it
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        # Topic: locked to operators by default; a joiner gets it after names.
        bob.send("/topic dev mine now")
        self.assertEqual(bob.expect_event("error")["code"], "not-operator")
        alice.send("/topic dev release on friday")
        ev = bob.expect_event("topic", room="dev")
        self.assertEqual((ev["topic"], ev["by"]), ("release on friday", "alice"))
        carol.send("/join dev")
        got = [carol.expect_event(t, room="dev") for t in ("join", "names", "topic")]
        self.assertEqual(got[2]["topic"], "release on friday")
        carol.send("/topic dev")
        self.assertEqual(carol.expect_event("topic")["by"], "alice")
        # Operators: op, then the new operator kicks.
        carol.send("/kick dev bob")
        self.assertEqual(carol.expect_event("error")["code"], "not-operator")
        alice.send("/op dev carol")
        mode = bob.expect_event("mode", room="dev")
        self.assertEqual((mode["mode"], mode["on"], mode["nick"], mode["by"]),
                         ("op", True, "carol", "alice"))
        carol.send("/kick dev bob spamming")
        kick = alice.expect_event("kick")
        self.assertEqual((kick["room"], kick["nick"], kick["by"], kick["reason"]),
                         ("dev", "bob", "carol", "spamming"))
        self.assertEqual(bob.expect_event("kick")["nick"], "bob")
        bob.send("/say dev still here?", "/say lobby still connected")
        self.assertEqual(bob.expect_event("error")["code"], "not-in-room")
        self.assertEqual(alice.expect_event("message", nick="bob")["text"], "still connected")
        # Ban by address (bob is a guest): he cannot come back; unban lets him.
        alice.send("/ban dev bob", "/ban dev")
        self.assertEqual(alice.expect_event("mode", mode="ban")["nick"], "bob")
        [ban] = alice.expect_event("bans")["bans"]
        self.assertEqual((ban["entry"], ban["nick"], ban["by"]),
                         ("address:127.0.0.1", "bob", "alice"))
        bob.send("/join dev")
        self.assertEqual(bob.expect_event("error")["code"], "banned")
        bob.send("/ban dev", "/unban dev address:127.0.0.1")
        self.assertEqual(codes(bob, 2), ["not-operator", "not-operator"])
        alice.send("/unban dev address:127.0.0.1", "/unban dev address:127.0.0.1")
        self.assertEqual(alice.expect_event("error")["code"], "no-such-ban")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        # Moderated: only operators and voiced members speak.
        alice.send("/set dev moderated on")
        bob.expect_event("mode", mode="moderated", on=True)
        bob.send("/say dev may I?")
        self.assertEqual(bob.expect_event("error")["code"], "moderated")
        alice.send("/voice dev bob")
        bob.expect_event("mode", mode="voice", nick="bob")
        bob.send("/say dev thanks")
        self.assertEqual(alice.expect_event("message", nick="bob")["text"], "thanks")
        alice.send("/set dev")
        flags = alice.expect_event("flags")
        self.assertEqual((flags["moderated"], flags["topic-lock"], flags["key"]),
                         (True, True, None))
        bob.send("/who dev")
        names = bob.expect_event("names", room="dev")
        self.assertEqual((names["ops"], names["voiced"]), (["alice", "carol"], ["bob"]))

    def test_invite_only_key_and_limit(self):
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        alice.send("/join priv", "/set priv invite-only on", "/set priv key s3cret",
                   "/set priv limit 2")
        alice.expect_event("mode", mode="limit", value=2)
        bob.send("/join priv", "/set priv")
        self.assertEqual(bob.expect_event("error")["code"], "invite-only")
        flags = bob.expect_event("flags")
        self.assertEqual((flags["invite-only"], flags["key"], flags["limit"]), (True, True, 2))
        alice.send("/invite bob priv")
        invite = bob.expect_event("invite")
        self.assertEqual((invite["room"], invite["by"]), ("priv", "alice"))
        bob.send("/join priv")
        bob.expect_event("names", room="priv")
        alice.send("/set priv invite-only off")
        alice.expect_event("mode", mode="invite-only", on=False)
        carol.send("/join priv", "/join priv wrong")
        self.assertEqual(codes(carol, 2), ["room-full", "room-full"])
        bob.send("/part priv")
        bob.expect_event("part", room="priv")
        carol.send("/join priv wrong", "/join priv s3cret")
        error = carol.expect_event("error")
        # The core says what is wrong; the line face adds its command.
        self.assertEqual((error["code"], error["message"]),
                         ("bad-key", "priv needs its key: /join ROOM KEY"))
        carol.expect_event("names", room="priv")

    def test_bad_arguments_are_usage_errors(self):
        alice = self.client("alice")
        alice.send("/join dev")
        alice.expect_event("names", room="dev")
        alice.send("/op dev", "/kick", "/ban", "/unban dev", "/invite bob", "/topic",
                   "/set dev moderated maybe", "/set dev limit 0", "/set dev colour red",
                   "/op dev nobody", "/op nowhere alice", "/topic nowhere x")
        self.assertEqual(codes(alice, 12), ["usage"] * 9 + ["no-such-nick", "no-such-room",
                                                            "no-such-room"])
        alice.send("/ping ok")
        alice.expect_event("pong")


    def test_deop_takes_operator_status_away(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("/join dev")
        alice.expect_event("names", room="dev")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        alice.send("/op dev bob", "/voice dev bob")
        alice.expect_event("mode", mode="voice")
        alice.send("/deop dev bob")
        mode = bob.expect_event("mode", room="dev", mode="op", on=False)
        self.assertEqual(mode["nick"], "bob")
        bob.send("/kick dev alice")
        self.assertEqual(bob.expect_event("error")["code"], "not-operator")
        bob.send("/who dev")
        names = bob.expect_event("names", room="dev")
        self.assertEqual((names["ops"], names["voiced"]), (["alice"], ["bob"]))


class KeptAcrossRestartsTests(AccountServerTestCase):
    """Accounts (alice, bob; carol is an admin) and a database file that
    outlives the server: a room's lasting state comes back after a restart."""

    accounts = {"alice": "alice's pass phrase", "bob": "hunter2-bob", "carol": "carol-admin",
                "dave": "dave-pass"}
    extra_args = ("--guests", "yes", "--admin", "carol", "--db", "chat.sqlite")

    def restart(self):
        self.server.stop()
        self.server = ChatServer(*self.server_args(), directory=self.dir).start()
        self.addCleanup(self.server.stop)

    def logged_in(self, name):
        c = self.client()
        self.login(c, name, self.accounts[name])
        c.expect_event("nick", new=name)
        return c

    def test_topic_flags_bans_and_account_operators_survive_a_restart(self):
        alice, dave = self.logged_in("alice"), self.logged_in("dave")
        alice.send("/join dev")
        self.assertEqual(alice.expect_event("names", room="dev")["ops"], ["alice"])
        dave.send("/join dev")
        dave.expect_event("names", room="dev")
        alice.send("/topic dev kept topic", "/set dev moderated on", "/set dev key k1",
                   "/ban dev dave", "/kick dev dave")
        dave.expect_event("kick", nick="dave")
        alice.send("/ping saved")
        alice.expect_event("pong")
        self.restart()
        # An account operator is one again; the topic, flags and ban are back.
        bob = self.logged_in("bob")
        bob.send("/join dev", "/join dev k1")
        self.assertEqual(bob.expect_event("error")["code"], "bad-key")
        names = bob.expect_event("names", room="dev")
        self.assertEqual(names["ops"], [])  # not the first: dev has a saved operator
        topic = bob.expect_event("topic", room="dev")
        self.assertEqual((topic["topic"], topic["by"]), ("kept topic", "alice"))
        bob.send("/say dev hello?", "/set dev")
        self.assertEqual(bob.expect_event("error")["code"], "moderated")
        flags = bob.expect_event("flags")
        self.assertEqual((flags["moderated"], flags["key"]), (True, True))
        alice = self.logged_in("alice")
        alice.send("/join dev k1")
        self.assertEqual(alice.expect_event("names", room="dev")["ops"], ["alice"])
        alice.send("/ban dev")
        [ban] = alice.expect_event("bans")["bans"]
        self.assertEqual((ban["entry"], ban["nick"], ban["by"]), ("account:dave", "dave", "alice"))
        dave = self.logged_in("dave")
        dave.send("/join dev k1")
        self.assertEqual(dave.expect_event("error")["code"], "banned")
        # The admin operates every room, the default one included.
        carol = self.logged_in("carol")
        carol.send("/who", "/topic lobby set by the admin")
        self.assertEqual(carol.expect_event("names")["ops"], ["carol"])
        self.assertEqual(bob.expect_event("topic", room="lobby")["by"], "carol")
        bob.send("/topic lobby mine")
        self.assertEqual(bob.expect_event("error")["code"], "not-operator")
        carol.send("/set dev moderated off")  # not a member of dev: still its operator
        alice.expect_event("mode", mode="moderated", on=False)

    def test_admin_option_needs_accounts(self):
        done = subprocess.run(twistd_command() + ["-n", "--pidfile=", "chat", "--admin",
                                                  "carol", "--db", ":memory:"],
                              cwd=self.dir, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--admin names accounts", done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
