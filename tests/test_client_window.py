"""The real Tk window against a real server: typing, sending, receiving, reconnecting, closing.

Each test runs the client app (real widgets, real reactor, tksupport) in a
subprocess on an X display (``$DISPLAY``, or a private Xvfb) and a real
``twistd chat`` on loopback, and checks both sides: what a second, plain
socket client receives, and what the window's widgets show.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.procs import stop_process

from .certs import self_signed
from .support import ChatServer
from .window_support import WindowClient, Xvfb, display, tkinter_missing


def has_line(fragment, tag=None):
    """A predicate: the chat log has a line containing ``fragment`` (styled ``tag``)."""
    def check(state):
        return any(fragment in line and (tag is None or tag in tags)
                   for line, tags in zip(state["lines"], state["tags"]))
    return check


def plain(members):
    """The member list without the operator and voice marks, by name."""
    return sorted((m.lstrip("@+") for m in members), key=str.casefold)


class WindowTestCase(SynchronousTestCase):
    server_args = ()

    def setUp(self):
        self.display = display(self)
        self.server = ChatServer(*self.server_args).start()
        self.addCleanup(self.server.stop)

    def window(self, *args):
        w = WindowClient(self.display, "--port", str(self.server.port), *args)
        self.addCleanup(w.close)
        return w

    def peer(self, nick):
        c = self.server.client()
        self.addCleanup(c.close)
        c.json_mode(nick)
        return c

    def assertCleanExit(self, w):
        self.assertEqual(w.wait_exit(), 0, w.errors())
        self.assertNotIn("Traceback", w.errors())


class ChatWindowTests(WindowTestCase):
    def test_send_and_receive_through_the_window(self):
        alice = self.window("--nick", "alice")
        state = alice.wait_for(lambda s: s["status"] == "Connected as alice in lobby",
                               "alice to be connected")
        self.assertEqual(state["room"], "#lobby")
        self.assertIn("#lobby", state["title"])
        self.assertEqual(state["members"], ["alice"])

        bob = self.peer("bob")
        state = alice.wait_for(lambda s: "bob" in s["members"], "bob in the member list")
        self.assertEqual(state["members"], ["alice", "bob"])
        self.assertEqual(state["members_label"], "2 members")
        self.assertTrue(has_line("bob joined lobby", "system")(state))

        # Typed into the entry, sent with the Send button: bob gets it.
        alice.say("hello from the window")
        ev = bob.expect_event("message", nick="alice")
        self.assertEqual((ev["text"], ev["room"]), ("hello from the window", "lobby"))
        # The window shows the server's copy, timestamped, in the own style.
        state = alice.wait_for(has_line("<alice> hello from the window", "own"),
                               "alice's own message in her log")
        line = next(line for line in state["lines"] if "hello from the window" in line)
        self.assertRegex(line, r"^\[\d\d:\d\d\] <alice> hello from the window$")
        self.assertEqual(state["entry"], "")

        # Enter in the entry sends too; slash commands go through as typed.
        alice.call("type", text="/me waves")
        alice.call("key", widget="entry", key="Return")
        ev = bob.expect_event("message", nick="alice", text="waves")
        self.assertIs(ev["action"], True)
        alice.wait_for(has_line("* alice waves", "action"), "the action line")

        # Up recalls the earlier input.
        alice.call("key", widget="entry", key="Up")
        self.assertEqual(alice.dump()["entry"], "/me waves")
        alice.call("key", widget="entry", key="Up")
        self.assertEqual(alice.dump()["entry"], "hello from the window")
        alice.call("key", widget="entry", key="Down")
        self.assertEqual(alice.dump()["entry"], "/me waves")
        alice.call("type", text="")

        # bob's message and action appear, each in its style; his private
        # message opens a conversation of its own in the list, marked.
        bob.send("hi alice", "/me bows", "/msg alice just for you")
        state = alice.wait_for(lambda s: "*bob* (1) !" in s["conversations"],
                               "bob's private conversation in the list")
        self.assertTrue(has_line("<bob> hi alice", "other")(state), state["lines"])
        self.assertTrue(has_line("* bob bows", "action")(state), state["lines"])
        self.assertFalse(has_line("just for you")(state), state["lines"])
        self.assertTrue(state["at_bottom"])

        # Unread count in the title while the window is not focused.
        alice.call("focus", focused=False)
        bob.send("are you there?")
        alice.wait_for(lambda s: s["title"].startswith("(1) #lobby"), "an unread count")
        self.assertNotIn("(1)", alice.call("focus", focused=True)["title"])

        # A nick change and a part are reflected in the member list.
        carol = self.peer("carol")
        alice.wait_for(lambda s: "carol" in s["members"], "carol in the member list")
        carol.send("/nick caroline")
        alice.wait_for(lambda s: s["members"] == ["alice", "bob", "caroline"], "caroline")
        carol.send("/quit")
        state = alice.wait_for(lambda s: s["members"] == ["alice", "bob"], "carol gone")
        self.assertTrue(has_line("caroline quit (quit)", "system")(state))

        # The close button (clicked twice, impatiently): a clean goodbye, exit code 0.
        alice.call("close")
        try:
            alice.call("close", timeout=5)
        except AssertionError:
            pass  # the window may be gone already
        self.assertCleanExit(alice)
        ev = bob.expect_event("quit", nick="alice")
        self.assertTrue(ev["reason"].startswith("quit"), ev)

    def test_nick_taken_is_shown_and_another_can_be_picked(self):
        self.peer("alice")
        w = self.window("--nick", "alice")
        state = w.wait_for(has_line("nick-taken", "error"), "the nick-taken error")
        line = next(line for line in state["lines"] if "nick-taken" in line)
        self.assertIn("/nick", line)  # it says how to pick another
        # Still usable: after its grace the server registers the connection as a guest.
        state = w.wait_for(lambda s: s["status"].startswith("Connected as guest")
                           and s["status"].endswith(" in lobby"), "a guest nick in lobby")
        bob = self.peer("bob")
        # A taken nick typed in the nick field: refused, the field shows the real nick.
        w.call("nick", text="bob")
        w.call("key", widget="nick", key="Return")
        state = w.wait_for(has_line("the nick bob is taken", "error"), "bob is taken")
        self.assertTrue(state["nick_field"].startswith("guest"), state["nick_field"])
        # Pick another nick in the nick field.
        w.call("nick", text="alice2")
        w.call("key", widget="nick", key="Return")
        ev = bob.expect_event("nick", new="alice2")
        self.assertTrue(ev["old"].startswith("guest"))
        state = w.wait_for(lambda s: s["status"] == "Connected as alice2 in lobby", "alice2")
        self.assertIn("alice2", state["members"])
        self.assertIn("alice2", state["title"])
        w.call("close")
        self.assertCleanExit(w)


class RoomsWindowTests(WindowTestCase):
    """Protocol v2: several rooms in one window, driven by real clicks and keys (xdotool)."""

    def setUp(self):
        super().setUp()
        if shutil.which("xdotool") is None:
            self.skipTest("needs xdotool (Debian: apt-get install xdotool)")

    def xdotool(self, *args):
        env = dict(os.environ, DISPLAY=self.display)
        result = subprocess.run(["xdotool"] + list(args), env=env, capture_output=True,
                                timeout=20)
        self.assertEqual(result.returncode, 0, result.stderr)

    def click_entry(self, w, index):
        """A real mouse click on the ``index``th entry of the conversation list."""
        x, y = w.call("geometry")["rooms"][index]
        self.xdotool("mousemove", "--sync", str(x), str(y), "click", "1")

    def keys(self, w, *keys):
        """Real key presses in the window, the entry having the focus."""
        w.call("focus_entry")
        for key in keys:
            self.xdotool("key", "--clearmodifiers", key)

    def test_rooms_topic_operators_and_switching(self):
        alice = self.window("--nick", "alice")
        alice.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        bob = self.peer("bob")
        # /join from the entry: the room is listed, shown, and alice (its first
        # member) is its operator.
        alice.say("/join dev")
        state = alice.wait_for(lambda s: s["room"] == "#dev" and s["members"] == ["@alice"],
                               "alice, operator of dev")
        self.assertEqual((state["conversations"], state["selected"]), (["#lobby", "#dev"],
                                                                     ["#dev"]))
        self.assertEqual(state["title"], "#dev — alice — twisted-chat")
        alice.say("/topic dev release on Friday")
        alice.wait_for(lambda s: s["topic"] == "release on Friday (set by alice)",
                       "the topic bar")
        bob.send("/join dev")
        bob.expect_event("topic", room="dev", topic="release on Friday", by="alice")
        alice.say("/voice dev bob")
        state = alice.wait_for(lambda s: s["members"] == ["@alice", "+bob"], "bob voiced")
        self.assertTrue(has_line("alice gives voice to bob", "system")(state), state["lines"])

        # Plain text and /me go to the shown room.
        alice.say("hello dev")
        self.assertEqual(bob.expect_event("message", nick="alice")["room"], "dev")
        alice.say("/me waves")
        ev = bob.expect_event("message", nick="alice", action=True)
        self.assertEqual((ev["room"], ev["text"]), ("dev", "waves"))

        # Elsewhere: unread counts in the list, and a mark when alice is named.
        bob.send("/say lobby anyone here?", "/say lobby alice: lunch?")
        state = alice.wait_for(lambda s: s["conversations"] == ["#lobby (2) !", "#dev"],
                               "unread and mention marks on lobby")
        self.assertFalse(has_line("lunch?")(state), state["lines"])
        # A click on lobby shows it: its log, members and topic; the marks go.
        self.click_entry(alice, 0)
        state = alice.wait_for(lambda s: s["room"] == "#lobby", "lobby shown after a click")
        self.assertEqual((state["conversations"], state["selected"]), (["#lobby", "#dev"],
                                                                     ["#lobby"]))
        self.assertTrue(has_line("<bob> alice: lunch?", "other")(state), state["lines"])
        self.assertFalse(has_line("hello dev")(state), state["lines"])
        self.assertEqual((state["members"], state["topic"]), (["alice", "bob"], "(no topic)"))
        alice.say("yes!")
        self.assertEqual(bob.expect_event("message", nick="alice", text="yes!")["room"], "lobby")
        # Ctrl+PgDn / Ctrl+PgUp: the next and previous room.
        self.keys(alice, "ctrl+Next")
        state = alice.wait_for(lambda s: s["room"] == "#dev", "dev after Ctrl+PgDn")
        self.assertEqual(state["topic"], "release on Friday (set by alice)")
        self.assertEqual(state["members"], ["@alice", "+bob"])
        self.assertTrue(has_line("* alice waves", "action")(state), state["lines"])
        self.keys(alice, "ctrl+Prior")
        alice.wait_for(lambda s: s["room"] == "#lobby", "lobby after Ctrl+PgUp")
        self.keys(alice, "ctrl+Prior")  # wraps round
        alice.wait_for(lambda s: s["room"] == "#dev", "dev again, wrapping round")

        # A nick change shows in every room's list; a topic change in the bar.
        bob.send("/nick rob")
        alice.wait_for(lambda s: s["members"] == ["@alice", "+rob"], "rob in dev")
        alice.say("/topic dev release on Monday")
        alice.wait_for(lambda s: s["topic"] == "release on Monday (set by alice)", "new topic")
        self.click_entry(alice, 0)
        state = alice.wait_for(lambda s: s["room"] == "#lobby", "lobby again")
        self.assertEqual(state["members"], ["alice", "rob"])
        self.assertTrue(has_line("bob is now known as rob", "system")(state), state["lines"])
        alice.call("close")
        self.assertCleanExit(alice)

    def test_part_kick_quit_and_private_conversations(self):
        alice = self.window("--nick", "alice")
        alice.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        bob = self.peer("bob")
        bob.send("/join ops")  # bob, first in ops, is its operator
        bob.expect_event("names", room="ops")
        alice.say("/join ops")
        alice.wait_for(lambda s: s["room"] == "#ops" and s["members"] == ["@bob", "alice"],
                       "alice in ops")
        alice.say("/join dev")
        alice.wait_for(lambda s: s["room"] == "#dev", "alice in dev")
        bob.send("/join dev")
        alice.wait_for(lambda s: s["members"] == ["@alice", "bob"], "bob in dev")
        # /part alone leaves the shown room: the list loses it, the next is shown.
        alice.say("/part")
        ev = bob.expect_event("part", room="dev", nick="alice")
        self.assertEqual(ev["reason"], "left")
        state = alice.wait_for(lambda s: s["conversations"] == ["#lobby", "#ops"],
                               "dev off the list")
        self.assertEqual(state["room"], "#ops")
        self.assertTrue(has_line("you left dev (left)", "system")(state), state["lines"])
        # Kicked out of ops: it leaves the list, with who and why.
        bob.send("/kick ops alice not today")
        state = alice.wait_for(lambda s: s["conversations"] == ["#lobby"], "ops off the list")
        self.assertEqual(state["room"], "#lobby")
        self.assertTrue(has_line("bob kicked you from ops (not today)", "error")(state),
                        state["lines"])
        # A private message: a conversation of its own; typing in it answers bob.
        bob.send("/msg alice psst")
        state = alice.wait_for(lambda s: s["conversations"] == ["#lobby", "*bob* (1) !"],
                               "bob's private conversation")
        self.click_entry(alice, 1)
        state = alice.wait_for(lambda s: s["room"] == "*bob* (private)", "the conversation")
        self.assertEqual(state["topic"], "private conversation with bob")
        self.assertTrue(has_line("*bob* psst", "private")(state), state["lines"])
        alice.say("what is it?")
        ev = bob.expect_event("private", to="bob")
        self.assertEqual((ev["from"], ev["text"]), ("alice", "what is it?"))
        alice.wait_for(has_line("-> *bob* what is it?", "private"), "the sent line")
        # bob quits: said in the conversation and in the shared room.
        bob.send("/quit gone")
        state = alice.wait_for(has_line("bob quit (quit: gone)", "system"), "bob's quit")
        self.keys(alice, "ctrl+Prior")
        state = alice.wait_for(lambda s: s["room"] == "#lobby", "lobby")
        self.assertEqual(state["members"], ["alice"])
        self.assertTrue(has_line("bob quit (quit: gone)", "system")(state), state["lines"])
        alice.call("close")
        self.assertCleanExit(alice)


class ScrollTests(WindowTestCase):
    server_args = ("--rate", "0")  # bob pastes 60 lines at once
    def test_log_follows_new_lines_unless_scrolled_up(self):
        w = self.window("--nick", "alice")
        w.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        bob = self.peer("bob")
        bob.send(*[f"line {i}" for i in range(60)])
        state = w.wait_for(has_line("<bob> line 59"), "60 lines")
        self.assertTrue(state["at_bottom"])
        # Scrolled up to read: new lines do not pull the view down.
        self.assertFalse(w.call("scroll", fraction=0.0)["at_bottom"])
        bob.send("while you were reading")
        state = w.wait_for(has_line("while you were reading"), "a new line")
        self.assertFalse(state["at_bottom"])
        # Back at the bottom: it follows again.
        self.assertTrue(w.call("scroll", fraction=1.0)["at_bottom"])
        bob.send("and now you see me")
        state = w.wait_for(has_line("and now you see me"), "another line")
        self.assertTrue(state["at_bottom"])


class ReconnectWindowTests(WindowTestCase):
    def test_server_restart_both_windows_come_back(self):
        alice = self.window("--nick", "alice")
        alice.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected")
        alice.say("/join ops")
        alice.wait_for(lambda s: s["room"] == "#ops", "room ops")
        alice.say("/join dev")
        alice.wait_for(lambda s: s["room"] == "#dev" and plain(s["members"]) == ["alice"],
                       "room dev")
        # --room: that room instead of the server's default one.
        bob = self.window("--nick", "bob", "--room", "dev")
        for w in (alice, bob):
            w.wait_for(lambda s: s["room"] == "#dev"
                       and plain(s["members"]) == ["alice", "bob"], "both in dev")
        self.assertEqual(bob.wait_for(lambda s: s["conversations"] == ["#dev"],
                                      "bob out of lobby")["selected"], ["#dev"])
        self.assertEqual(alice.dump()["conversations"], ["#lobby", "#ops", "#dev"])

        port = self.server.port
        self.server.stop()
        for w in (alice, bob):
            state = w.wait_for(lambda s: "reconnecting in" in s["status"], "reconnecting")
            self.assertEqual(state["members"], [])
            self.assertTrue(has_line("disconnected", "error")(state), state["lines"])
        self.assertEqual(alice.dump()["conversations"], ["#lobby", "#ops", "#dev"])

        # Typed while disconnected: shown as queued, not lost.
        alice.say("typed while the server was down")
        alice.wait_for(has_line("typed while the server was down", "unsent"), "a queued line")

        self.server = ChatServer(port=f"tcp:{port}:interface=127.0.0.1").start()
        self.addCleanup(self.server.stop)
        # Back with the same nick in every room, the shown one still shown; the
        # queued line went to the room it was typed in, which echoes it (the own style).
        alice.wait_for(has_line("<alice> typed while the server was down", "own"),
                       "the queued line sent after the reconnect", timeout=40)
        for w, nick in ((alice, "alice"), (bob, "bob")):
            state = w.wait_for(lambda s: s["status"] == f"Connected as {nick} in dev"
                               and plain(s["members"]) == ["alice", "bob"],
                               f"{nick} connected in dev again", timeout=40)
            self.assertEqual((state["room"], state["selected"]), ("#dev", ["#dev"]))
        self.assertEqual(alice.dump()["conversations"], ["#lobby", "#ops", "#dev"])
        self.assertEqual(bob.dump()["conversations"], ["#dev"])
        carol = self.peer("carol")
        carol.send("/who ops", "/who lobby")
        self.assertEqual(carol.expect_event("names", room="ops")["nicks"], ["alice"])
        self.assertEqual(sorted(carol.expect_event("names", room="lobby")["nicks"]),
                         ["alice", "carol"])
        carol.send("/join dev")
        names = carol.expect_event("names", room="dev")
        self.assertEqual(sorted(names["nicks"]), ["alice", "bob", "carol"])
        # Joining, carol is replayed dev's history (alice's queued line) first.
        replayed = carol.expect_event("message", history=True)
        self.assertEqual(replayed["text"], "typed while the server was down")
        carol.expect_event("history-end", room="dev")
        # And they keep chatting, window to window.
        bob.say("welcome back")
        alice.wait_for(has_line("<bob> welcome back", "other"), "bob's line in alice's window")
        alice.say("still here")
        bob.wait_for(has_line("<alice> still here", "other"), "alice's line in bob's window")
        self.assertEqual(carol.expect_event("message", nick="alice")["text"], "still here")

        # Ctrl+C in the terminal: the same clean stop as the close button.
        alice.proc.send_signal(signal.SIGINT)
        self.assertCleanExit(alice)
        self.assertTrue(carol.expect_event("quit", nick="alice")["reason"].startswith("quit"))
        bob.wait_for(lambda s: plain(s["members"]) == ["bob", "carol"],
                     "alice gone from bob's list")
        bob.call("close")
        self.assertCleanExit(bob)


class TLSWindowTests(SynchronousTestCase):
    def test_connect_endpoint_over_tls(self):
        display_name = display(self)
        directory = tempfile.mkdtemp(prefix="chat-client-tls-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self_signed(directory, "localhost")
        server = ChatServer(
            "--port", "ssl:0:interface=127.0.0.1:privateKey=server.key:certKey=server.pem",
            directory=directory,
        ).start()
        self.addCleanup(server.stop)
        tls_port = server.listener("ssl:")
        # --connect takes any client endpoint: TLS, verified against our CA.
        w = WindowClient(display_name, "--nick", "alice", "--connect",
                         f"tls:localhost:{tls_port}:trustRoots={directory}")
        self.addCleanup(w.close)
        w.wait_for(lambda s: s["status"] == "Connected as alice in lobby", "connected over TLS")
        bob = server.client()
        self.addCleanup(bob.close)
        bob.json_mode("bob")
        w.say("sealed")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "sealed")
        # /quit typed in the entry closes the window, with its reason.
        w.say("/quit see you")
        self.assertEqual(w.wait_exit(), 0, w.errors())
        self.assertNotIn("Traceback", w.errors())
        bob.expect_event("quit", nick="alice", reason="quit: see you")


class WindowManagerTests(SynchronousTestCase):
    """Under a real window manager (openbox, on a private Xvfb): the X focus drives
    the unread count in the title, and the title bar's close button closes cleanly."""

    def setUp(self):
        why = tkinter_missing()
        if why:
            self.skipTest(why)
        missing = [b for b in ("Xvfb", "openbox", "wmctrl") if shutil.which(b) is None]
        if missing:
            self.skipTest(f"needs {', '.join(missing)} "
                          "(Debian: apt-get install xvfb openbox wmctrl)")
        xvfb = Xvfb()
        self.display = xvfb.start()
        self.addCleanup(xvfb.stop)
        self.env = dict(os.environ, DISPLAY=self.display)
        wm = subprocess.Popen(["openbox"], env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, wm)
        deadline = time.monotonic() + 20
        while self.wmctrl("-m").returncode != 0:  # until the WM answers
            if time.monotonic() > deadline:
                self.fail("openbox did not start")
            time.sleep(0.1)
        self.server = ChatServer().start()
        self.addCleanup(self.server.stop)

    def wmctrl(self, *args):
        return subprocess.run(["wmctrl"] + list(args), env=self.env, capture_output=True,
                              timeout=20)

    def window(self, nick):
        w = WindowClient(self.display, "--port", str(self.server.port), "--nick", nick)
        self.addCleanup(w.close)
        w.wait_for(lambda s: s["status"] == f"Connected as {nick} in lobby", f"{nick} in")
        return w

    def test_focus_unread_count_and_close_button(self):
        alice, bob = self.window("alice"), self.window("bob")
        alice.wait_for(lambda s: s["members"] == ["alice", "bob"], "bob in alice's list")
        self.assertEqual(self.wmctrl("-a", "— bob —").returncode, 0)  # alice loses the focus
        alice.wait_for(lambda s: not s["focused"], "alice's window to lose the focus")
        bob.say("one")
        bob.say("two")
        state = alice.wait_for(lambda s: s["title"].startswith("(2) "), "2 unread in the title")
        self.assertEqual(state["title"], "(2) #lobby — alice — twisted-chat")
        self.assertEqual(bob.dump()["title"], "#lobby — bob — twisted-chat")
        self.assertEqual(self.wmctrl("-a", "— alice —").returncode, 0)
        state = alice.wait_for(lambda s: s["title"] == "#lobby — alice — twisted-chat",
                               "the count cleared once alice's window has the focus")
        self.assertTrue(state["focused"])
        # The window manager's close button (WM_DELETE_WINDOW).
        self.assertEqual(self.wmctrl("-c", "— bob —").returncode, 0)
        self.assertEqual(bob.wait_exit(), 0, bob.errors())
        self.assertNotIn("Traceback", bob.errors())
        alice.wait_for(has_line("bob quit (quit", "system"), "bob's goodbye")


class HistoryWindowTests(WindowTestCase):
    def test_replayed_history_above_a_new_messages_separator(self):
        bob = self.peer("bob")
        bob.send("said before alice came")
        bob.expect_event("message", text="said before alice came")  # stored
        alice = self.window("--nick", "alice")
        state = alice.wait_for(has_line("new messages", "separator"), "the separator")
        lines = state["lines"]
        old = next(i for i, line in enumerate(lines) if "said before alice came" in line)
        sep = next(i for i, line in enumerate(lines) if "new messages" in line)
        self.assertLess(old, sep)
        self.assertIn("history", state["tags"][old])
        bob.send("said after")
        state = alice.wait_for(has_line("<bob> said after", "other"), "the live line")
        live = next(i for i, line in enumerate(state["lines"]) if "said after" in line)
        self.assertGreater(live, sep)
        self.assertNotIn("history", state["tags"][live])
