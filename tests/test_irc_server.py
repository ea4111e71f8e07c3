"""The IRC face of a real ``twistd -n chat --irc``: raw IRC lines over loopback,
Twisted's own IRC client, and an IRC user and a line-protocol user in the
same rooms."""

import re
import socket
import time

from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols import irc

from twisted_chat.faces.irc import message
from twisted_chat.tap import Options

from .support import ChatServer, LineClient
from .test_accounts import AccountServerTestCase
from .web_support import WSClient, web_port

IRC_LISTENING = r"irc listening on tcp:(\d+)"


class IRCLineClient(LineClient):
    """A blocking raw-line IRC client."""

    def msg(self, timeout=None):
        return message.parse(self.readline(timeout))

    def expect_msg(self, command, *params, timeout=None):
        """Read until a message with ``command`` whose first params are ``params``."""
        while True:
            m = self.msg(timeout)
            if m.command == "PING":
                self.send("PONG :" + (m.params[0] if m.params else ""))
                continue
            if m.command == command and m.params[:len(params)] == list(params):
                return m

    def register(self, nick, caps=()):
        if caps:
            self.send("CAP LS 302", "CAP REQ :" + " ".join(caps))
        self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        if caps:
            self.send("CAP END")
        welcome = self.expect_msg("001")
        self.expect_msg("366")  # the default room's names
        return welcome


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = Options()
        options.parseOptions(["--db", ":memory:", *args])
        return options

    def test_irc_endpoints(self):
        options = self.parse("--irc", "6667", "--irc", "tcp:6668:interface=127.0.0.1")
        self.assertEqual(options["irc"], ["tcp:6667", "tcp:6668:interface=127.0.0.1"])
        self.assertEqual(len(options["irc-endpoints"]), 2)
        self.assertEqual(self.parse()["irc"], [])

    def test_bad_irc_endpoint(self):
        self.assertRaises(UsageError, self.parse, "--irc", "nonsense:1")


class IRCServerTestCase(SynchronousTestCase):
    server_args = ()
    db = ":memory:"

    def setUp(self):
        self.server = ChatServer("--irc", "tcp:0:interface=127.0.0.1", "--db", self.db,
                                 *self.server_args).start()
        self.addCleanup(self.server.stop)
        found = self.server.grep(IRC_LISTENING)
        line = found[0] if found else self.server.wait_for_log(IRC_LISTENING)
        self.irc_port = int(re.search(IRC_LISTENING, line).group(1))

    def irc(self, nick=None, caps=()):
        c = IRCLineClient(self.irc_port)
        self.addCleanup(c.close)
        if nick:
            c.register(nick, caps)
        return c


class RawIRCTests(IRCServerTestCase):
    def test_registration_numerics(self):
        c = self.irc()
        c.send("CAP LS 302", "NICK alice", "USER alice 0 * :Alice")
        ls = c.expect_msg("CAP", "*", "LS")
        self.assertIn("server-time", ls.params[-1].split())
        c.send("CAP END")
        got = []
        while True:
            m = c.msg()
            got.append(m)
            if m.command in ("376", "422"):
                break
        commands = [m.command for m in got]
        self.assertEqual(commands[:4], ["001", "002", "003", "004"])
        isupport = [m for m in got if m.command == "005"]
        self.assertTrue(isupport)
        for m in isupport:
            self.assertLessEqual(len(m.params) - 2, 13)
        self.assertIn("251", commands)
        join = c.expect_msg("JOIN")
        self.assertEqual(join.params, ["#lobby"])
        names = c.expect_msg("353")
        self.assertIn("alice", names.params[-1].split())

    def test_limits_and_encoding(self):
        alice, bob = self.irc("alice"), self.irc("bob")
        alice.send("PRIVMSG #lobby :" + "x" * 600)
        alice.expect_msg("417")
        alice.send_raw(b"PRIVMSG #lobby :\xc3\x28\r\n")
        alice.expect_msg("FAIL", "PRIVMSG", "INVALID_UTF8")
        alice.send("PRIVMSG #lobby :still here")
        m = bob.expect_msg("PRIVMSG", "#lobby")
        self.assertEqual(m.params[1], "still here")

    def test_ping_is_a_barrier_and_quit_says_error(self):
        alice, bob = self.irc("alice", caps=("echo-message",)), self.irc("bob")
        alice.send("PRIVMSG #lobby :one", "PING :sync")
        got = []
        while not got or got[-1].command != "PONG":
            got.append(alice.msg())
        self.assertIn(("PRIVMSG", ["#lobby", "one"]), [(m.command, m.params) for m in got])
        self.assertEqual(got[-1].params, ["twisted-chat", "sync"])
        alice.send("QUIT :lunch")
        alice.expect_msg("ERROR")
        self.assertTrue(alice.closed())
        m = bob.expect_msg("QUIT")
        self.assertEqual(m.source.split("!")[0], "alice")
        self.assertEqual(m.params, ["Quit: lunch"])


class CrossFaceTests(IRCServerTestCase):
    def test_irc_and_line_users_in_one_room(self):
        alice = self.irc("alice", caps=("server-time", "message-tags", "echo-message"))
        bob = self.server.line("bob")
        alice.expect_msg("JOIN", "#lobby")  # bob's join (or alice's own, first)
        # IRC -> line
        alice.send("PRIVMSG #lobby :hello bob")
        ev = bob.expect_event("message", nick="alice")
        self.assertEqual((ev["room"], ev["text"]), ("lobby", "hello bob"))
        echo = alice.expect_msg("PRIVMSG", "#lobby", "hello bob")
        self.assertEqual(echo.tags["msgid"], str(ev["id"]))
        # line -> IRC
        bob.send("hi alice")
        m = alice.expect_msg("PRIVMSG", "#lobby")
        self.assertEqual((m.source.split("!")[0], m.params[1]), ("bob", "hi alice"))
        self.assertIn("time", m.tags)
        # actions both ways
        alice.send("PRIVMSG #lobby :\x01ACTION waves\x01")
        ev = bob.expect_event("message", nick="alice", action=True)
        self.assertEqual(ev["text"], "waves")
        bob.send("/me bows")
        m = alice.expect_msg("PRIVMSG", "#lobby", "\x01ACTION bows\x01")
        self.assertEqual(m.source.split("!")[0], "bob")
        # nick changes both ways
        bob.send("/nick robert")
        m = alice.expect_msg("NICK", "robert")
        self.assertEqual(m.source.split("!")[0], "bob")
        alice.send("NICK alicia")
        ev = bob.expect_event("nick", old="alice")
        self.assertEqual(ev["new"], "alicia")
        # nicks are unique across faces
        alice.send("NICK Robert")
        alice.expect_msg("433", "alicia", "Robert")

    def test_topic_and_kick_across_faces(self):
        alice = self.irc("alice")
        bob = self.server.line("bob")
        alice.send("JOIN #dev")
        alice.expect_msg("366", "alice", "#dev")
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        alice.expect_msg("JOIN", "#dev")
        alice.send("TOPIC #dev :release plans")
        ev = bob.expect_event("topic", room="dev")
        self.assertEqual((ev["topic"], ev["by"]), ("release plans", "alice"))
        bob.send("/topic dev new plans")  # the topic is locked: operators only
        bob.expect_event("error", code="not-operator")
        alice.send("MODE #dev -t")
        ev = bob.expect_event("mode", room="dev", mode="topic-lock")
        self.assertFalse(ev["on"])
        bob.send("/topic dev new plans")
        m = alice.expect_msg("TOPIC", "#dev", "new plans")
        self.assertEqual(m.source.split("!")[0], "bob")
        alice.send("MODE #dev +m")
        ev = bob.expect_event("mode", room="dev", mode="moderated")
        self.assertTrue(ev["on"])
        bob.send("/say dev can I speak?")
        bob.expect_event("error", code="moderated")
        alice.send("KICK #dev bob :enough")
        ev = bob.expect_event("kick", room="dev")
        self.assertEqual((ev["nick"], ev["by"], ev["reason"]), ("bob", "alice", "enough"))
        m = alice.expect_msg("KICK", "#dev", "bob")
        self.assertEqual(m.params[2], "enough")

    def test_history_replay_to_an_irc_joiner(self):
        bob = self.server.line("bob")
        bob.send("/join dev", "said before alice came", "/me waited")
        bob.expect_event("message", text="waited")
        alice = self.irc("alice", caps=("batch", "server-time", "message-tags"))
        alice.send("JOIN #dev")
        start = alice.expect_msg("BATCH")
        self.assertEqual(start.params[1:], ["chathistory", "#dev"])
        first, second, end = alice.msg(), alice.msg(), alice.msg()
        self.assertEqual((first.command, first.params), ("PRIVMSG", ["#dev",
                                                                     "said before alice came"]))
        self.assertEqual(second.params[1], "\x01ACTION waited\x01")
        for m in (first, second):
            self.assertEqual(m.tags["batch"], start.params[0][1:])
            self.assertIn("time", m.tags)
            self.assertIn("msgid", m.tags)
        self.assertEqual((end.command, end.params), ("BATCH", ["-" + start.params[0][1:]]))

    def test_line_user_joins_irc_channel_and_quits(self):
        alice = self.irc("alice")
        bob = self.server.line("bob")
        alice.expect_msg("JOIN", "#lobby")
        bob.send("/quit bye all")
        m = alice.expect_msg("QUIT")
        self.assertEqual((m.source.split("!")[0], m.params), ("bob", ["Quit: bye all"]))


class _Recorder(irc.IRCClient):
    """Twisted's IRC client, recording what it is told."""

    nickname = "tw"

    def __init__(self):
        self.seen = []

    def signedOn(self):
        self.seen.append(("signedOn",))
        self.join("dev")

    def joined(self, channel):
        self.seen.append(("joined", channel))

    def userJoined(self, user, channel):
        self.seen.append(("userJoined", user, channel))

    def privmsg(self, user, channel, text):
        self.seen.append(("privmsg", user.split("!")[0], channel, text))

    def action(self, user, channel, data):
        self.seen.append(("action", user.split("!")[0], channel, data))

    def topicUpdated(self, user, channel, topic):
        self.seen.append(("topic", user.split("!")[0], channel, topic))

    def userRenamed(self, old, new):
        self.seen.append(("renamed", old, new))


class TwistedIRCClientTests(IRCServerTestCase):
    """Twisted's irc.IRCClient, its bytes carried over a blocking socket."""

    def pump(self, sock, client, transport, until, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            out = transport.value()
            transport.clear()
            if out:
                sock.sendall(out)
            if until():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; seen {client.seen}")
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except OSError:
                continue
            if not data:
                raise AssertionError(f"closed; seen {client.seen}")
            client.dataReceived(data)

    def test_twisted_irc_client(self):
        bob = self.server.line("bob")
        sock = socket.create_connection(("127.0.0.1", self.irc_port), timeout=10)
        self.addCleanup(sock.close)
        client, transport = _Recorder(), StringTransport()
        client.makeConnection(transport)
        self.pump(sock, client, transport, lambda: ("joined", "#dev") in client.seen)
        self.assertIn(("signedOn",), client.seen)
        bob.send("/join dev")
        bob.expect_event("names", room="dev")
        client.mode("#dev", True, "o", user="bob")
        self.pump(sock, client, transport, lambda: True)
        bob.expect_event("mode", room="dev", mode="op", nick="bob")
        bob.send("hello tw")
        bob.send("/me waves")
        bob.send("/topic dev a topic")
        self.pump(sock, client, transport, lambda: any(s[0] == "topic" for s in client.seen))
        self.assertIn(("userJoined", "bob", "#dev"), client.seen)
        self.assertIn(("privmsg", "bob", "#dev", "hello tw"), client.seen)
        self.assertIn(("action", "bob", "#dev", "waves"), client.seen)
        self.assertIn(("topic", "bob", "#dev", "a topic"), client.seen)
        client.msg("#dev", "hi bob")
        client.describe("#dev", "bows")
        self.pump(sock, client, transport, lambda: True)
        ev = bob.expect_event("message", nick="tw", text="hi bob")
        self.assertEqual(ev["room"], "dev")
        bob.expect_event("message", nick="tw", text="bows", action=True)

    def test_away_across_faces(self):
        bob = self.server.line("bob")  # JSON
        carol = self.server.client()  # text
        self.addCleanup(carol.close)
        carol.readline()
        carol.send("/nick carol")
        carol.expect_text("carol")
        dave = self.irc("dave", caps=("away-notify",))
        alice = self.irc("alice")
        dave.expect_msg("JOIN", "#lobby")  # alice's
        alice.send("AWAY :\x02gone\x02 fishing\x01")
        alice.expect_msg("306")
        m = dave.expect_msg("AWAY")
        self.assertEqual((m.source.split("!")[0], m.params), ("alice", ["gone fishing"]))
        dave.send("PRIVMSG alice :there?")
        self.assertEqual(dave.expect_msg("301").params[1:], ["alice", "gone fishing"])
        # The line protocol carries no away state: nothing at all reaches
        # its users, in either mode, before the answer to their next ping.
        bob.send("/ping one")
        events = []
        while not events or events[-1]["type"] != "pong":
            events.append(bob.event())
        self.assertEqual({e["type"] for e in events}, {"join", "pong"})
        carol.send("/ping two")
        lines = [carol.readline()]
        while lines[-1] != "-- pong two":
            lines.append(carol.readline())
        for line in lines[:-1]:
            self.assertTrue(line.strip(), lines)
            self.assertNotIn("fishing", line)
            self.assertNotIn("away", line)
        alice.send("AWAY")
        alice.expect_msg("305")
        self.assertEqual(dave.expect_msg("AWAY").params, [])


class ChatHistoryChecks:
    """draft/chathistory end to end, on whatever store the server has."""

    CAPS = ("batch", "server-time", "message-tags", "draft/chathistory")

    def batch(self, client):
        """(texts, messages) of the next chathistory batch, checked."""
        start = client.msg()
        self.assertEqual((start.command, start.params[1]), ("BATCH", "chathistory"), start)
        ref = start.params[0][1:]
        got = []
        while True:
            m = client.msg()
            if m.command == "BATCH":
                self.assertEqual(m.params, ["-" + ref])
                return [g.params[1] for g in got], got
            self.assertEqual((m.command, m.tags["batch"]), ("PRIVMSG", ref))
            got.append(m)

    def test_chathistory_pages_a_room_across_faces(self):
        bob = self.server.line("bob")
        bob.send("/join dev")
        ids = {}
        for i in range(1, 7):
            bob.send(f"m{i}")
            ids[f"m{i}"] = bob.expect_event("message", text=f"m{i}")["id"]
        alice = self.irc("alice", caps=self.CAPS)
        alice.send("JOIN #dev")
        alice.expect_msg("366", "alice", "#dev")
        # No replay on join for a client that pages: the next thing is the page.
        alice.send("CHATHISTORY LATEST #dev * 3")
        texts, msgs = self.batch(alice)
        self.assertEqual(texts, ["m4", "m5", "m6"])
        self.assertEqual([m.tags["msgid"] for m in msgs], [str(ids[t]) for t in texts])
        self.assertEqual({m.source.split("!")[0] for m in msgs}, {"bob"})
        alice.send(f"CHATHISTORY BEFORE #dev msgid={ids['m4']} 2")
        self.assertEqual(self.batch(alice)[0], ["m2", "m3"])
        # By the time shown: what was said in a later millisecond (several
        # messages may share one). Times in this form sort as strings.
        alice.send("CHATHISTORY LATEST #dev * 6")
        shown = {m.params[1]: m.tags["time"] for m in self.batch(alice)[1]}
        self.assertEqual(sorted(shown.values()), [shown[f"m{i}"] for i in range(1, 7)])
        alice.send(f"CHATHISTORY AFTER #dev timestamp={shown['m4']} 5")
        self.assertEqual(self.batch(alice)[0], [t for t in sorted(shown)
                                                if shown[t] > shown["m4"]])
        alice.send(f"CHATHISTORY BEFORE #dev timestamp={shown['m4']} 5")
        self.assertEqual(self.batch(alice)[0], [t for t in sorted(shown)
                                                if shown[t] < shown["m4"]])
        alice.send(f"CHATHISTORY AROUND #dev msgid={ids['m3']} 3")
        self.assertEqual(self.batch(alice)[0], ["m2", "m3", "m4"])
        alice.send(f"CHATHISTORY BETWEEN #dev msgid={ids['m6']} msgid={ids['m1']} 2")
        self.assertEqual(self.batch(alice)[0], ["m4", "m5"])
        alice.send(f"CHATHISTORY AFTER #dev msgid={ids['m6']} 5")
        self.assertEqual(self.batch(alice)[0], [])
        bob.send("m7")
        live = alice.expect_msg("PRIVMSG", "#dev")
        self.assertEqual((live.params[1], "batch" in live.tags), ("m7", False))
        alice.send("CHATHISTORY LATEST #dev * 1")
        self.assertEqual(self.batch(alice)[0], ["m7"])
        # Rooms one is not in are not read, and say no more than a missing one.
        bob.send("/join secret", "psst")
        bob.expect_event("message", text="psst")
        for target in ("#secret", "#nowhere", "bob"):
            alice.send(f"CHATHISTORY LATEST {target} * 5")
            m = alice.msg()
            self.assertEqual((m.command, m.params[:4]),
                             ("FAIL", ["CHATHISTORY", "INVALID_TARGET", "LATEST", target]))

    def test_each_joiner_gets_its_own_history_batch(self):
        bob = self.server.line("bob")
        bob.send("/join dev", "one", "two")
        bob.expect_event("message", text="two")
        for nick in ("carol", "dave", "erin"):
            c = self.irc(nick, caps=("batch", "server-time", "message-tags"))
            c.send("JOIN #dev")
            c.expect_msg("366", nick, "#dev")
            self.assertEqual(self.batch(c)[0], ["one", "two"])


class ChatHistorySQLiteTests(ChatHistoryChecks, IRCServerTestCase):
    db = "chat.sqlite"  # in the server's own directory: the writer process and a reader


class IRCAccountTests(AccountServerTestCase):
    """account-notify, account-tag and extended-join with a line-protocol user
    who logs in (``--auth``)."""

    def server_args(self):
        return (*super().server_args(), "--irc", "tcp:0:interface=127.0.0.1")

    def test_account_notify_and_tags_across_faces(self):
        found = self.server.grep(IRC_LISTENING)
        line = found[0] if found else self.server.wait_for_log(IRC_LISTENING)
        dora = IRCLineClient(int(re.search(IRC_LISTENING, line).group(1)))
        self.addCleanup(dora.close)
        dora.register("dora", caps=("account-notify", "account-tag", "extended-join"))
        bob = self.client("bobby")
        m = dora.expect_msg("JOIN", "#lobby")
        self.assertEqual((m.source.split("!")[0], m.params[1:]), ("bobby", ["*", "bobby"]))
        bob.send("as a guest")
        m = dora.expect_msg("PRIVMSG", "#lobby")
        self.assertEqual((m.params[1], "account" in m.tags), ("as a guest", False))
        self.login(bob, "bob", self.accounts["bob"])
        m = dora.msg()
        self.assertEqual((m.command, m.source.split("!")[0], m.params), ("NICK", "bobby", ["bob"]))
        m = dora.msg()
        self.assertEqual((m.command, m.source.split("!")[0], m.params), ("ACCOUNT", "bob", ["bob"]))
        bob.send("/join dev")
        dora.send("JOIN #dev")
        m = dora.expect_msg("353")
        bob.send("/say dev as myself")
        m = dora.expect_msg("PRIVMSG", "#dev")
        self.assertEqual((m.params[1], m.tags.get("account")), ("as myself", "bob"))


class IRCAndWebTests(IRCServerTestCase):
    server_args = ("--web", "tcp:0:interface=127.0.0.1")

    def test_away_and_real_names_send_nothing_to_web_sockets(self):
        web = WSClient(web_port(self.server))
        self.addCleanup(web.close)
        self.assertEqual(web.event()["type"], "welcome")
        web.send("/nick wendy")
        web.expect_event("names")
        alice = self.irc("alice", caps=("setname",))
        web.expect_event("join", nick="alice")
        alice.send("AWAY :out", "SETNAME :Alice Liddell", "AWAY")
        alice.expect_msg("305")
        # Every frame until the pong is a JSON event (an empty frame would
        # not parse), and none of them is about alice's away or name.
        web.send("/ping after")
        seen = [web.event()]
        while seen[-1]["type"] != "pong":
            seen.append(web.event())
        self.assertEqual([e["type"] for e in seen], ["pong"])
