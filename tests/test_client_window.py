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

from .certs import self_signed
from .support import ChatServer
from .window_support import WindowClient, Xvfb, display, tkinter_missing


def has_line(fragment, tag=None):
    """A predicate: the chat log has a line containing ``fragment`` (styled ``tag``)."""
    def check(state):
        return any(fragment in line and (tag is None or tag in tags)
                   for line, tags in zip(state["lines"], state["tags"]))
    return check


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

        # bob's message, action and private message appear, each in its style.
        bob.send("hi alice", "/me bows", "/msg alice just for you")
        state = alice.wait_for(has_line("*bob* just for you", "private"), "bob's private line")
        self.assertTrue(has_line("<bob> hi alice", "other")(state), state["lines"])
        self.assertTrue(has_line("* bob bows", "action")(state), state["lines"])
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
        alice.say("/join dev")
        alice.wait_for(lambda s: s["room"] == "#dev" and s["members"] == ["alice"], "room dev")
        bob = self.window("--nick", "bob", "--room", "dev")
        for w in (alice, bob):
            w.wait_for(lambda s: s["room"] == "#dev" and s["members"] == ["alice", "bob"],
                       "both in dev")

        port = self.server.port
        self.server.stop()
        for w in (alice, bob):
            state = w.wait_for(lambda s: "reconnecting in" in s["status"], "reconnecting")
            self.assertEqual(state["members"], [])
            self.assertTrue(has_line("disconnected", "error")(state), state["lines"])

        # Typed while disconnected: shown as queued, not lost.
        alice.say("typed while the server was down")
        alice.wait_for(has_line("typed while the server was down", "unsent"), "a queued line")

        self.server = ChatServer(port=f"tcp:{port}:interface=127.0.0.1").start()
        self.addCleanup(self.server.stop)
        # Back with the same nick in the same room; the queued line went to the
        # server, which echoes it in the room (the own style).
        alice.wait_for(has_line("<alice> typed while the server was down", "own"),
                       "the queued line sent after the reconnect", timeout=40)
        for w, nick in ((alice, "alice"), (bob, "bob")):
            state = w.wait_for(lambda s: s["status"] == f"Connected as {nick} in dev"
                               and s["members"] == ["alice", "bob"],
                               f"{nick} connected in dev again", timeout=40)
            self.assertEqual(state["room"], "#dev")
        carol = self.peer("carol")
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
        bob.wait_for(lambda s: s["members"] == ["bob", "carol"], "alice gone from bob's list")
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
        self.addCleanup(_end, wm)
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


def _end(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
