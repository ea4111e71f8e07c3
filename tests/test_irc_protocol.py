"""The IRC face over in-memory transports: registration, capabilities,
channels, moderation and limits, against a real Hub (no sockets)."""

import base64

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.auth import Accounts
from twisted_chat.faces.irc import message
from twisted_chat.faces.irc.protocol import IRCFactory
from twisted_chat.history.interface import StoredMessage
from twisted_chat.hub import Hub, MemoryHistory


class IRCConn:
    """One in-memory IRC connection."""

    def __init__(self, factory, clock, port):
        self.clock = clock
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def send(self, *lines):
        self.proto.dataReceived("".join(line + "\r\n" for line in lines).encode("utf-8"))
        self.clock.advance(0)

    def send_raw(self, data: bytes):
        self.proto.dataReceived(data)
        self.clock.advance(0)

    def lines(self):
        self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n"), data
        return [line for line in data.decode("utf-8").split("\r\n") if line]

    def messages(self):
        return [message.parse(line) for line in self.lines()]

    def commands(self):
        return [m.command for m in self.messages()]


class IRCTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.hub = Hub(server_name="chat.test", motd="be nice", clock=self.clock.seconds,
                       replay=0)
        self.factory = IRCFactory(self.hub, clock=self.clock, rate=5, burst=20)
        self._port = 40000
        self.conns = []

    def connect(self, nick=None, caps=()):
        self._port += 1
        c = IRCConn(self.factory, self.clock, self._port)
        self.conns.append(c)
        if caps:
            c.send("CAP LS 302", "CAP REQ :" + " ".join(caps))
        if nick:
            c.send(f"NICK {nick}", f"USER {nick} 0 * :{nick} real")
            if caps:
                c.send("CAP END")
        for each in self.conns:
            each.lines()
        return c


class RegistrationTests(IRCTestCase):
    def test_welcome_burst(self):
        c = IRCConn(self.factory, self.clock, 1)
        c.send("NICK alice")
        self.assertEqual(c.lines(), [])
        c.send("USER alice 0 * :Alice A")
        msgs = c.messages()
        commands = [m.command for m in msgs]
        self.assertEqual(commands[:4], ["001", "002", "003", "004"])
        self.assertEqual(msgs[0].params[0], "alice")
        self.assertIn("alice!alice@chat.test", msgs[0].params[-1])
        isupport = [m for m in msgs if m.command == "005"]
        self.assertGreaterEqual(len(isupport), 2)
        tokens = []
        for m in isupport:
            self.assertLessEqual(len(m.params) - 2, 13)
            self.assertEqual(m.params[-1], "are supported by this server")
            tokens += m.params[1:-1]
        self.assertIn("CASEMAPPING=rfc8265", tokens)
        self.assertIn("CHANTYPES=#", tokens)
        self.assertIn("PREFIX=(ov)@+", tokens)
        self.assertIn("NETWORK=chat.test", tokens)
        for numeric in ("251", "254", "255", "375", "372", "376"):
            self.assertIn(numeric, commands)
        self.assertIn(["alice", "- be nice"], [m.params for m in msgs if m.command == "372"])
        # Then the hub's registration: into the default room.
        tail = commands[commands.index("376") + 1:]
        self.assertEqual(tail, ["JOIN", "353", "366"])
        join = msgs[commands.index("JOIN")]
        self.assertEqual((join.source, join.params), ("alice!alice@chat.test", ["#lobby"]))

    def test_lusers_counts_the_members_registered(self):
        a = self.connect("alice")
        early = self.connect()
        early.send("NICK early")  # no USER yet: not registered, not counted
        self.connect("bob")
        line = self.hub.connect(lambda event: None)  # a line member, nick not set yet

        def users():
            a.send("LUSERS")
            said = {m.command: m.params[-1] for m in a.messages()}
            n = said["251"].split()[2]
            self.assertEqual(said["255"], f"I have {n} clients and 0 servers")
            # Alone, the local and the global counts are the same.
            self.assertRegex(said["265"], f"^Current local users {n}, max \\d+$")
            self.assertEqual(said["266"], said["265"].replace("local", "global"))
            return said["251"]

        self.assertEqual(users(), "There are 2 users and 0 invisible on 1 servers")
        self.hub.join(line, "dev")  # joining a room registers a line member
        self.hub.register(line)  # (once)
        self.assertEqual(users(), "There are 3 users and 0 invisible on 1 servers")
        a.send("LUSERS")
        self.assertEqual([m.params[1:] for m in a.messages() if m.command == "254"],
                         [["2", "channels formed"]])  # lobby and dev
        self.hub.disconnect(line)
        self.hub.disconnect(line)  # (once)
        early.send("USER early 0 * :E")
        self.assertEqual(users(), "There are 3 users and 0 invisible on 1 servers")
        self.conns[-1].send("QUIT :bye")
        self.assertEqual(users(), "There are 2 users and 0 invisible on 1 servers")
        # 265 and 266 carry the counts as parameters too, with the most
        # registered at once (alice, bob and the line member; early came
        # after the line member had gone).
        a.send("LUSERS")
        said = {m.command: m.params[1:] for m in a.messages()}
        self.assertEqual(said["265"], ["2", "3", "Current local users 2, max 3"])
        self.assertEqual(said["266"], ["2", "3", "Current global users 2, max 3"])
        self.assertEqual(said["254"], ["1", "channels formed"])  # dev went with the line member

    def test_no_motd(self):
        self.hub.motd = None
        c = IRCConn(self.factory, self.clock, 1)
        c.send("NICK alice", "USER a 0 * :A")
        self.assertIn("422", c.commands())

    def test_cap_negotiation_holds_registration(self):
        c = IRCConn(self.factory, self.clock, 1)
        c.send("CAP LS 302", "NICK alice", "USER a 0 * :A")
        (ls,) = c.messages()
        self.assertEqual(ls.command, "CAP")
        self.assertEqual(ls.params[:2], ["*", "LS"])
        self.assertEqual(set(ls.params[2].split()),
                         {"server-time", "message-tags", "echo-message", "multi-prefix",
                          "userhost-in-names", "cap-notify", "batch", "account-tag",
                          "extended-join", "draft/chathistory", "away-notify",
                          "account-notify", "setname"})
        c.send("CAP REQ :server-time echo-message")
        (ack,) = c.messages()
        self.assertEqual(ack.params[1:], ["ACK", "server-time echo-message"])
        c.send("CAP REQ :server-time bogus")
        (nak,) = c.messages()
        self.assertEqual(nak.params[1:], ["NAK", "server-time bogus"])
        c.send("CAP LIST")
        (listed,) = c.messages()
        self.assertEqual(listed.params[1:], ["LIST", "echo-message server-time"])
        self.assertNotIn("alice", [m.nick for m in self.hub.rooms["lobby"].members])
        c.send("CAP END")
        commands = c.commands()
        self.assertEqual(commands[0], "001")
        self.assertIn("JOIN", commands)

    def test_nick_in_use_then_another(self):
        self.connect("alice")
        c = IRCConn(self.factory, self.clock, 9)
        c.send("NICK Alice", "USER a 0 * :A")
        (m,) = c.messages()
        self.assertEqual(m.command, "433")
        self.assertEqual(m.params[:2], ["*", "Alice"])
        c.send("NICK alice2")
        self.assertEqual(c.commands()[0], "001")

    def test_erroneous_nick(self):
        c = IRCConn(self.factory, self.clock, 9)
        c.send("NICK 9lives")
        (m,) = c.messages()
        self.assertEqual(m.command, "432")

    def test_commands_before_registration(self):
        c = IRCConn(self.factory, self.clock, 9)
        c.send("JOIN #dev", "PING tok")
        msgs = c.messages()
        self.assertEqual([m.command for m in msgs], ["451", "PONG"])
        self.assertEqual(msgs[1].params, ["chat.test", "tok"])

    def test_registration_timeout(self):
        c = IRCConn(self.factory, self.clock, 9)
        c.send("NICK alice")
        self.clock.advance(61)
        (m,) = c.messages()
        self.assertEqual(m.command, "ERROR")
        self.assertTrue(c.transport.disconnecting)

    def test_user_mode_query(self):
        c = self.connect("alice")
        c.send("MODE alice", "MODE alice +i")
        self.assertEqual(c.commands(), ["221", "501"])


class ChannelTests(IRCTestCase):
    def test_privmsg_between_members(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("PRIVMSG #lobby :hello there")
        self.assertEqual(a.lines(), [])  # no echo-message
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG #lobby :hello there"])
        a.send("PRIVMSG #lobby :\x01ACTION waves\x01")
        self.assertEqual(b.lines(),
                         [":alice!alice@chat.test PRIVMSG #lobby :\x01ACTION waves\x01"])

    def test_echo_message_with_tags(self):
        a = self.connect("alice", caps=("echo-message", "message-tags", "server-time"))
        b = self.connect("bob")
        a.send("PRIVMSG #lobby :hi")
        (echo,) = a.messages()
        self.assertEqual(echo.command, "PRIVMSG")
        self.assertEqual(set(echo.tags), {"time", "msgid"})
        self.assertEqual(echo.tags["time"], "2023-11-14T22:13:20.000Z")
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG #lobby hi"])

    def test_private_message(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("PRIVMSG bob :psst")
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG bob psst"])
        a.send("PRIVMSG nobody :psst")
        (m,) = a.messages()
        self.assertEqual((m.command, m.params[1]), ("401", "nobody"))

    def test_controls_are_stripped_and_ctcp_dropped(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("PRIVMSG #lobby :\x1b[31mred\x02bold\x00", "PRIVMSG bob :\x01VERSION\x01")
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG #lobby [31mredbold"])

    def test_join_part_topic(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("JOIN #dev")
        msgs = a.messages()
        self.assertEqual([m.command for m in msgs], ["JOIN", "353", "366"])
        self.assertEqual(msgs[1].params, ["alice", "=", "#dev", "@alice"])
        a.send("TOPIC #dev :release plans")  # just after the join: still a change
        (topic,) = a.messages()
        self.assertEqual((topic.command, topic.params), ("TOPIC", ["#dev", "release plans"]))
        b.send("JOIN #dev")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["JOIN", "353", "366", "332", "333"])
        self.assertEqual(msgs[3].params, ["bob", "#dev", "release plans"])
        self.assertEqual(msgs[4].params[:3], ["bob", "#dev", "alice"])
        self.assertEqual([m.command for m in a.messages()], ["JOIN"])
        b.send("TOPIC #dev")
        self.assertEqual(b.commands(), ["332", "333"])
        b.send("PART #dev :bye now")
        (part,) = a.messages()
        self.assertEqual((part.command, part.params), ("PART", ["#dev", "bye now"]))
        self.assertEqual(b.commands(), ["PART"])
        b.send("TOPIC #dev :mine")
        (m,) = b.messages()
        self.assertEqual(m.command, "442")

    def test_join_several_with_keys_and_errors(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("JOIN #dev", "MODE #dev +k sesame")
        a.lines()
        b.send("JOIN #dev,#ops")
        msgs = b.messages()
        self.assertEqual(msgs[0].command, "475")
        self.assertEqual(msgs[1:4][0].command, "JOIN")
        b.send("JOIN #dev sesame")
        self.assertEqual(b.commands()[0], "JOIN")
        b.send("JOIN #dev")
        self.assertEqual(b.lines(), [])  # already there

    def test_names_who_whois_list_ison(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("JOIN #dev", "TOPIC #dev :t")
        a.lines()
        b.send("NAMES #lobby")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["353", "366"])
        self.assertEqual(set(msgs[0].params[-1].split()), {"alice", "bob"})
        b.send("WHO #dev")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["352", "315"])
        self.assertEqual(msgs[0].params[1:7], ["#dev", "alice", "chat.test", "chat.test",
                                               "alice", "H@"])
        b.send("WHOIS alice")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["311", "319", "312", "318"])
        self.assertEqual(set(msgs[1].params[-1].split()), {"#lobby", "@#dev"})
        b.send("WHOIS ghost")
        self.assertEqual(b.commands(), ["401", "318"])
        b.send("LIST")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["321", "322", "322", "323"])
        self.assertEqual(msgs[1].params[1:], ["#dev", "1", "t"])
        b.send("ISON alice ghost Bob")
        (m,) = b.messages()
        self.assertEqual(m.params, ["bob", "alice bob"])

    def test_nick_change_seen_by_neighbours(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("NICK alicia")
        self.assertEqual(a.lines(), [":alice!alice@chat.test NICK alicia"])
        self.assertEqual(b.lines(), [":alice!alice@chat.test NICK alicia"])
        a.send("WHOIS bob")
        self.assertEqual(a.messages()[0].params[0], "alicia")  # numerics to the new nick
        b.send("NICK alicia")
        (m,) = b.messages()
        self.assertEqual((m.command, m.params[1]), ("433", "alicia"))

    def test_quit(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("QUIT :lunch")
        self.assertEqual(a.commands(), ["ERROR"])
        self.assertTrue(a.transport.disconnecting)
        self.assertEqual(b.lines(), [":alice!alice@chat.test QUIT :Quit: lunch"])

    def test_ping_pong(self):
        a = self.connect("alice")
        a.send("PING :abc def")
        self.assertEqual(a.lines(), [":chat.test PONG chat.test :abc def"])


class ModerationTests(IRCTestCase):
    def setUp(self):
        super().setUp()
        self.a, self.b = self.connect("alice"), self.connect("bob")
        self.a.send("JOIN #dev")
        self.b.send("JOIN #dev")
        self.a.lines()
        self.b.lines()

    def test_kick(self):
        self.a.send("KICK #dev bob :spam")
        line = ":alice!alice@chat.test KICK #dev bob spam"
        self.assertEqual(self.a.lines(), [line])
        self.assertEqual(self.b.lines(), [line])
        self.b.send("PRIVMSG #dev :still here?")
        (m,) = self.b.messages()
        self.assertEqual(m.command, "404")

    def test_not_operator(self):
        self.b.send("KICK #dev alice", "MODE #dev +m", "MODE #dev +o bob")
        msgs = self.b.messages()
        self.assertEqual([m.command for m in msgs], ["482", "482", "482"])
        self.assertEqual(msgs[0].params[1], "#dev")

    def test_modes(self):
        self.a.send("MODE #dev +mt", "MODE #dev +v bob", "MODE #dev +l 5", "MODE #dev")
        lines = self.a.lines()
        self.assertEqual([line.split(" ", 1)[1] for line in lines], [
            "MODE #dev +m", "MODE #dev +t", "MODE #dev +v bob", "MODE #dev +l 5",
            "324 alice #dev +ntml 5"])
        self.assertEqual(self.b.lines(), lines[:4])
        self.a.send("MODE #dev -v bob", "MODE #dev +z")
        msgs = self.a.messages()
        self.assertEqual([m.command for m in msgs], ["MODE", "472"])
        self.b.lines()
        self.b.send("PRIVMSG #dev :hi")
        (m,) = self.b.messages()
        self.assertEqual(m.command, "404")

    def test_op_and_names_prefixes(self):
        self.a.send("MODE #dev +o bob")
        self.b.lines()
        self.b.send("NAMES #dev")
        names = self.b.messages()[0].params[-1].split()
        self.assertEqual(sorted(names), ["@alice", "@bob"])

    def test_ban_list_and_unban(self):
        self.a.send("MODE #dev +b bob")
        (m,) = self.a.messages()
        self.assertEqual(m.params, ["#dev", "+b", "bob!*@*"])
        self.a.send("MODE #dev +b")
        msgs = self.a.messages()
        self.assertEqual([m.command for m in msgs], ["367", "368"])
        self.assertEqual(msgs[0].params[1:3], ["#dev", "address:127.0.0.1"])
        self.a.send("MODE #dev -b bob!*@*")
        (m,) = self.a.messages()
        self.assertEqual(m.params, ["#dev", "-b", "bob!*@*"])

    def test_ban_list_for_non_operators(self):
        self.b.send("MODE #dev +b", "MODE #dev b")
        msgs = self.b.messages()
        self.assertEqual([m.command for m in msgs], ["368", "368"])
        self.assertIn("operators only", msgs[0].params[-1])

    def test_invite(self):
        c = self.connect("carol")
        self.a.send("MODE #dev +i")
        self.a.lines()
        c.send("JOIN #dev")
        self.assertEqual(c.commands(), ["473"])
        self.a.send("INVITE carol #dev")
        self.assertEqual(self.a.commands(), ["341"])
        self.assertEqual(c.lines(), [":alice!alice@chat.test INVITE carol #dev"])
        c.send("JOIN #dev")
        self.assertEqual(c.commands()[0], "JOIN")


class LimitTests(IRCTestCase):
    def test_input_too_long_keeps_the_connection(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("PRIVMSG #lobby :" + "x" * 600)
        (m,) = a.messages()
        self.assertEqual(m.command, "417")
        a.send_raw(b"PRIVMSG #lobby :" + b"y" * 10000)
        a.send_raw(b"z" * 100 + b"\r\nPRIVMSG #lobby :ok\r\n")
        self.assertEqual(a.commands(), ["417"])
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG #lobby ok"])

    def test_tags_allowed_beyond_512(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send("@+draft/x=" + "t" * 3000 + " PRIVMSG #lobby :tagged")
        self.assertEqual(b.lines(), [":alice!alice@chat.test PRIVMSG #lobby tagged"])

    def test_bad_utf8(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.send_raw(b"PRIVMSG #lobby :\xff\xfe\r\n")
        (m,) = a.messages()
        self.assertEqual((m.command, m.params[:2]), ("FAIL", ["PRIVMSG", "INVALID_UTF8"]))
        self.assertEqual(b.lines(), [])

    def test_rate_limit_delays_instead_of_dropping(self):
        a, b = self.connect("alice"), self.connect("bob")
        a.proto.bucket.tokens = 2
        a.send(*[f"PRIVMSG #lobby :{i}" for i in range(5)])
        self.assertEqual(len(b.lines()), 2)
        self.assertEqual(a.transport.producerState, "paused")
        self.clock.advance(0.2)
        self.assertEqual(len(b.lines()), 1)
        self.clock.advance(0.4)
        self.assertEqual([message.parse(x).params[1] for x in b.lines()], ["3", "4"])
        self.assertEqual(a.transport.producerState, "producing")

    def test_quit_is_never_delayed(self):
        a = self.connect("alice")
        a.proto.bucket.tokens = 0
        a.send("QUIT :now")
        self.assertEqual(a.commands(), ["ERROR"])


class AccountTests(IRCTestCase):
    def setUp(self):
        super().setUp()
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser("alice", "pw-a")
        self.accounts = Accounts([checker], self.clock)
        self.hub.reserved = self.accounts.reserved
        self.factory.accounts = self.accounts

    def sasl(self, c, name, password, nick="someone"):
        c.send("CAP LS 302")
        (ls,) = c.messages()
        self.assertIn("sasl=PLAIN", ls.params[-1].split())
        c.send("CAP REQ sasl", "NICK " + nick, "USER u 0 * :U", "AUTHENTICATE PLAIN")
        self.assertEqual([m.command for m in c.messages()], ["CAP", "AUTHENTICATE"])
        token = base64.b64encode(f"\0{name}\0{password}".encode()).decode()
        c.send("AUTHENTICATE " + token)
        return c.messages()

    def test_sasl_plain(self):
        c = IRCConn(self.factory, self.clock, 5)
        msgs = self.sasl(c, "alice", "pw-a")
        self.assertEqual([m.command for m in msgs], ["900", "903"])
        self.assertEqual(msgs[0].params[1:3], ["alice!alice@chat.test", "alice"])
        c.send("CAP END")
        msgs = c.messages()
        self.assertEqual((msgs[0].command, msgs[0].params[0]), ("001", "alice"))
        self.assertNotIn("NICK", [m.command for m in msgs])
        self.assertEqual(self.hub.members["alice"].account, "alice")
        c.send("WHOIS alice")
        self.assertIn("330", c.commands())
        d = self.connect("dora", caps=("account-tag", "extended-join"))
        c.send("PRIVMSG #lobby :hi")
        self.assertEqual(d.lines(), ["@account=alice :alice!alice@chat.test PRIVMSG #lobby hi"])
        d.send("JOIN #dev")
        d.lines()
        c.send("JOIN #dev")
        self.assertEqual(d.lines(), [":alice!alice@chat.test JOIN #dev alice U"])

    def test_account_notify_once_when_a_neighbour_logs_in(self):
        dora = self.connect("dora", caps=("account-notify",))
        eve = self.connect("eve")
        c = self.connect("al", caps=("sasl",))
        c.send("JOIN #dev")
        dora.send("JOIN #dev")
        for each in self.conns:
            each.lines()
        c.send("AUTHENTICATE PLAIN")
        c.send("AUTHENTICATE " + base64.b64encode(b"\0alice\0pw-a").decode())
        self.assertEqual(c.commands(), ["AUTHENTICATE", "NICK", "900", "903"])
        self.assertEqual([(m.command, m.source, m.params) for m in dora.messages()],
                         [("NICK", "al!al@chat.test", ["alice"]),
                          ("ACCOUNT", "alice!alice@chat.test", ["alice"])])
        self.assertEqual(eve.commands(), ["NICK"])

    def test_account_tag_is_the_senders_when_it_spoke(self):
        held = []

        class Slow(MemoryHistory):
            def append(self, record, done, failed=None):
                held.append(done)

        self.hub.history = Slow()
        dora = self.connect("dora", caps=("account-tag", "extended-join"))
        bob = self.connect("bob")
        c = IRCConn(self.factory, self.clock, 5)
        self.sasl(c, "alice", "pw-a")
        c.send("CAP END")
        c.lines()
        dora.lines()
        bob.send("PRIVMSG #lobby :trust me")  # a guest speaks; stored later
        bob.send("NICK robert")
        c.send("NICK bob")  # alice, logged in, takes the nick meanwhile
        for done in held:
            done(1)
        # (the renames wait behind the message, in the order they were accepted)
        self.assertEqual(dora.lines(), [":bob!bob@chat.test PRIVMSG #lobby :trust me",
                                        ":bob!bob@chat.test NICK robert",
                                        ":alice!alice@chat.test NICK bob"])
        # extended-join says the joiner's account as it joined
        c.send("JOIN #dev")
        dora.send("JOIN #dev")
        dora.lines()
        bob.send("JOIN #dev")
        self.assertEqual(dora.lines(), [":robert!robert@chat.test JOIN #dev * :bob real"])

    def test_sasl_failure_then_guest(self):
        c = IRCConn(self.factory, self.clock, 5)
        msgs = self.sasl(c, "alice", "wrong", nick="alice")
        self.assertEqual([m.command for m in msgs], ["904"])
        c.send("CAP END")
        (m,) = c.messages()
        self.assertEqual((m.command, m.params[1]), ("433", "alice"))  # reserved
        c.send("NICK bob")
        self.assertEqual(c.commands()[0], "001")

    def test_pass_login(self):
        c = IRCConn(self.factory, self.clock, 5)
        c.send("PASS alice:pw-a", "NICK al", "USER u 0 * :U")
        msgs = c.messages()
        self.assertEqual((msgs[0].command, msgs[0].params[0]), ("001", "alice"))

    def test_pass_with_nick_as_account(self):
        c = IRCConn(self.factory, self.clock, 5)
        c.send("PASS pw-a", "NICK alice", "USER u 0 * :U")
        self.assertEqual(c.messages()[0].params[0], "alice")

    def test_bad_pass_closes(self):
        c = IRCConn(self.factory, self.clock, 5)
        c.send("PASS alice:nope", "NICK al", "USER u 0 * :U")
        self.assertEqual(c.commands(), ["464", "ERROR"])
        self.assertTrue(c.transport.disconnecting)


class _ListHistory(MemoryHistory):
    """Keeps room messages in a list and replays them (no database)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def append(self, record, done, failed=None):
        kind, room, room_name, nick, target, text, action, t = record
        self._last_id += 1
        if kind == "message":
            self.rows.append((room, StoredMessage(self._last_id, t, room_name, nick, text,
                                                  action)))
        done(self._last_id)

    def before(self, room, before_id, limit):
        rows = [r for key, r in self.rows if key == room and r.id < before_id]
        return succeed(rows[-limit:])

    def page(self, room, limit, after_id=None, before_id=None, after_ms=None, before_ms=None,
             newest=True):
        def inside(r):
            ms = int(r.t * 1000)
            return ((after_id is None or r.id > after_id)
                    and (before_id is None or r.id < before_id)
                    and (after_ms is None or ms > after_ms)
                    and (before_ms is None or ms < before_ms))

        rows = [r for key, r in self.rows if key == room and inside(r)]
        if not limit:
            return succeed([])
        return succeed(rows[-limit:] if newest else rows[:limit])


class ReplayTests(IRCTestCase):
    def setUp(self):
        super().setUp()
        self.hub.history = _ListHistory()
        self.hub.replay = 10

    def test_replay_in_a_batch_with_times(self):
        a = self.connect("alice")
        a.send("JOIN #dev", "PRIVMSG #dev :first", "PRIVMSG #dev :\x01ACTION second\x01")
        self.clock.advance(60)
        b = self.connect("bob", caps=("batch", "server-time", "message-tags"))
        b.send("JOIN #dev")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs],
                         ["JOIN", "353", "366", "BATCH", "PRIVMSG", "PRIVMSG", "BATCH"])
        start, end = msgs[3], msgs[6]
        self.assertEqual(start.params[1:], ["chathistory", "#dev"])
        ref = start.params[0][1:]
        self.assertEqual(end.params, ["-" + ref])
        for m in msgs[4:6]:
            self.assertEqual(m.tags["batch"], ref)
            self.assertEqual(m.tags["time"], "2023-11-14T22:13:20.000Z")
            self.assertIn("msgid", m.tags)
        self.assertEqual(msgs[5].params[1], "\x01ACTION second\x01")

    def test_replay_without_batch_says_when(self):
        a = self.connect("alice")
        a.send("JOIN #dev", "PRIVMSG #dev :first")
        b = self.connect("bob")
        b.send("JOIN #dev")
        msgs = b.messages()
        self.assertEqual([m.command for m in msgs], ["JOIN", "353", "366", "PRIVMSG", "NOTICE"])
        self.assertEqual(msgs[3].params[1], "[2023-11-14 22:13] first")


class ChatHistoryTests(IRCTestCase):
    CAPS = ("batch", "server-time", "message-tags", "draft/chathistory")

    def setUp(self):
        super().setUp()
        self.hub.history = _ListHistory()
        self.hub.replay = 10
        self.alice = self.connect("alice")
        self.alice.send("JOIN #dev")
        for i in range(1, 7):  # "m1".."m6", ten seconds apart
            self.alice.send(f"PRIVMSG #dev :m{i}")
            self.clock.advance(10)
        self.ids = {r.text: r.id for _, r in self.hub.history.rows}
        self.bob = self.connect("bob", caps=self.CAPS)
        self.bob.send("JOIN #dev")
        self.bob.lines()

    def page(self, line):
        """The texts of the one batch CHATHISTORY answers with, checked."""
        self.bob.send(line)
        msgs = self.bob.messages()
        self.assertEqual(msgs[0].command, "BATCH", msgs)
        ref = msgs[0].params[0][1:]
        self.assertEqual(msgs[0].params[1:], ["chathistory", "#dev"])
        self.assertEqual(msgs[-1].params, ["-" + ref])
        for m in msgs[1:-1]:
            self.assertEqual((m.command, m.tags["batch"]), ("PRIVMSG", ref))
            self.assertIn("time", m.tags)
            self.assertEqual(m.tags["msgid"], str(self.ids[m.params[1]]))
        return [m.params[1] for m in msgs[1:-1]]

    def test_offered_and_advertised(self):
        c = IRCConn(self.factory, self.clock, 1)
        c.send("CAP LS 302")
        self.assertIn("draft/chathistory", c.messages()[0].params[-1].split())
        c.send("NICK carol", "USER carol 0 * :c", "CAP END")
        tokens = [t for m in c.messages() if m.command == "005" for t in m.params[1:-1]]
        self.assertIn("CHATHISTORY=500", tokens)
        self.assertIn("MSGREFTYPES=msgid,timestamp", tokens)

    def test_no_replay_on_join_with_the_cap(self):
        carol = self.connect("carol", caps=self.CAPS)
        carol.send("JOIN #dev")
        self.assertEqual([m.command for m in carol.messages()], ["JOIN", "353", "366"])
        dave = self.connect("dave", caps=("batch",))
        dave.send("JOIN #dev")
        self.assertEqual([m.command for m in dave.messages()].count("PRIVMSG"), 6)

    def test_latest(self):
        self.assertEqual(self.page("CHATHISTORY LATEST #dev * 3"), ["m4", "m5", "m6"])
        self.assertEqual(self.page(f"CHATHISTORY LATEST #dev msgid={self.ids['m2']} 10"),
                         ["m3", "m4", "m5", "m6"])
        self.assertEqual(self.page(f"CHATHISTORY LATEST #dev msgid={self.ids['m2']} 2"),
                         ["m5", "m6"])
        self.assertEqual(self.page("CHATHISTORY LATEST #dev * 0"),  # 0: the most we give
                         ["m1", "m2", "m3", "m4", "m5", "m6"])

    def test_before_and_after_exclude_the_reference(self):
        self.assertEqual(self.page(f"CHATHISTORY BEFORE #dev msgid={self.ids['m4']} 2"),
                         ["m2", "m3"])
        self.assertEqual(self.page(f"CHATHISTORY AFTER #dev msgid={self.ids['m2']} 2"),
                         ["m3", "m4"])
        self.assertEqual(self.page(f"CHATHISTORY BEFORE #dev msgid={self.ids['m1']} 5"), [])

    def test_by_timestamp(self):
        # m1 was said at 22:13:20.000, m2 ten seconds later...
        self.assertEqual(self.page("CHATHISTORY AFTER #dev timestamp=2023-11-14T22:13:30.000Z"
                                   " 2"), ["m3", "m4"])
        self.assertEqual(self.page("CHATHISTORY BEFORE #dev timestamp=2023-11-14T22:13:30.000Z"
                                   " 5"), ["m1"])
        self.assertEqual(self.page("CHATHISTORY LATEST #dev timestamp=2023-11-14T22:14:00.000Z"
                                   " 5"), ["m6"])

    def test_around_includes_the_reference(self):
        self.assertEqual(self.page(f"CHATHISTORY AROUND #dev msgid={self.ids['m4']} 4"),
                         ["m2", "m3", "m4", "m5"])
        self.assertEqual(self.page("CHATHISTORY AROUND #dev timestamp=2023-11-14T22:13:20.000Z"
                                   " 3"), ["m1", "m2", "m3"])

    def test_between_counts_from_the_first_reference(self):
        first, last = f"msgid={self.ids['m1']}", f"msgid={self.ids['m6']}"
        self.assertEqual(self.page(f"CHATHISTORY BETWEEN #dev {first} {last} 2"), ["m2", "m3"])
        self.assertEqual(self.page(f"CHATHISTORY BETWEEN #dev {last} {first} 2"), ["m4", "m5"])
        self.assertEqual(self.page(f"CHATHISTORY BETWEEN #dev {first} {last} 50"),
                         ["m2", "m3", "m4", "m5"])
        # An id and a time: which comes first is the message's time.
        when = "timestamp=2023-11-14T22:13:50.000Z"  # m4's
        self.assertEqual(self.page(f"CHATHISTORY BETWEEN #dev {when} {first} 5"),
                         ["m2", "m3"])
        self.assertEqual(self.page(f"CHATHISTORY BETWEEN #dev {first} {when} 1"), ["m2"])

    def test_empty_page_is_an_empty_batch(self):
        self.assertEqual(self.page(f"CHATHISTORY AFTER #dev msgid={self.ids['m6']} 5"), [])

    def refused(self, line):
        self.bob.send(line)
        msgs = self.bob.messages()
        self.assertEqual([m.command for m in msgs], ["FAIL"], msgs)
        return msgs[0].params[1:-1]

    def test_errors(self):
        self.assertEqual(self.refused("CHATHISTORY"), ["NEED_MORE_PARAMS", "*"])
        self.assertEqual(self.refused("CHATHISTORY LATEST #dev *"), ["NEED_MORE_PARAMS", "LATEST"])
        self.assertEqual(self.refused("CHATHISTORY SIDEWAYS #dev * 5"),
                         ["INVALID_PARAMS", "SIDEWAYS"])
        for ref in ("*", "msgid=abc", "msgid=", "timestamp=yesterday", "id=5",
                    "timestamp=2023-13-01T00:00:00.000Z"):
            self.assertEqual(self.refused(f"CHATHISTORY BEFORE #dev {ref} 5"),
                             ["INVALID_PARAMS", "BEFORE"], ref)
        self.assertEqual(self.refused("CHATHISTORY LATEST #dev * -1"), ["INVALID_PARAMS", "LATEST"])
        self.assertEqual(self.refused("CHATHISTORY LATEST #dev * ten"), ["INVALID_PARAMS", "LATEST"])

    def test_only_channels_one_is_in(self):
        self.connect("carol").send("JOIN #secret", "PRIVMSG #secret :psst")
        for target in ("#secret", "#nowhere", "alice", "#bad,name"):
            self.assertEqual(self.refused(f"CHATHISTORY LATEST {target} * 5"),
                             ["INVALID_TARGET", "LATEST", target])
        self.bob.send("PART #dev")
        self.bob.lines()
        self.assertEqual(self.refused("CHATHISTORY LATEST #dev * 5"),
                             ["INVALID_TARGET", "LATEST", "#dev"])

    def test_store_failure_is_message_error(self):
        def broken(*args, **kwargs):
            from twisted.internet.defer import fail
            return fail(RuntimeError("disk on fire"))

        self.hub.history.page = broken
        self.assertEqual(self.refused("CHATHISTORY LATEST #dev * 5"),
                         ["MESSAGE_ERROR", "LATEST", "#dev"])

    def test_targets_is_an_empty_list(self):
        self.bob.send("CHATHISTORY TARGETS timestamp=2023-11-14T22:13:20.000Z "
                      "timestamp=2023-11-15T22:13:20.000Z 10")
        msgs = self.bob.messages()
        self.assertEqual([(m.command, m.params[1:]) for m in msgs],
                         [("BATCH", ["draft/chathistory-targets"]), ("BATCH", [])])

    def test_without_batch_plain_lines(self):
        carol = self.connect("carol", caps=("draft/chathistory",))
        carol.send("JOIN #dev")
        carol.lines()
        carol.send("CHATHISTORY LATEST #dev * 2")
        msgs = carol.messages()
        self.assertEqual([m.command for m in msgs], ["PRIVMSG", "PRIVMSG"])
        self.assertTrue(msgs[0].params[1].endswith("m5"))


class AwayTests(IRCTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.connect("alice", caps=("away-notify",))
        self.bob = self.connect("bob")
        self.carol = self.connect("carol", caps=("away-notify", "server-time"))
        self.dave = self.connect("dave")
        for c in (self.alice, self.bob, self.carol, self.dave):
            c.send("JOIN #dev")
        for c in self.conns:
            c.lines()

    def test_away_and_back_once_per_neighbour(self):
        self.bob.send("AWAY :gone to lunch")
        self.assertEqual([(m.command, m.params[1:]) for m in self.bob.messages()],
                         [("306", ["You have been marked as being away"])])
        # alice and carol share #lobby and #dev with bob: one AWAY each.
        got = self.alice.messages()
        self.assertEqual([(m.command, m.source, m.params) for m in got],
                         [("AWAY", "bob!bob@chat.test", ["gone to lunch"])])
        self.assertIn("time", self.carol.messages()[0].tags)
        self.assertEqual(self.dave.lines(), [])
        self.bob.send("AWAY")
        self.assertEqual(self.bob.commands(), ["305"])
        self.assertEqual([(m.command, m.params) for m in self.alice.messages()],
                         [("AWAY", [])])
        self.assertEqual(self.dave.lines(), [])

    def test_away_again_tells_only_oneself(self):
        self.bob.send("AWAY :lunch")
        for c in self.conns:
            c.lines()
        self.bob.send("AWAY :lunch")
        self.assertEqual(self.bob.commands(), ["306"])
        self.assertEqual(self.alice.lines(), [])

    def test_rpl_away_on_privmsg_whois_and_who_flags(self):
        self.bob.send("AWAY :gone to lunch")
        self.alice.lines()
        self.alice.send("PRIVMSG bob :hi")
        self.assertEqual([(m.command, m.params[1:]) for m in self.alice.messages()],
                         [("301", ["bob", "gone to lunch"])])
        self.alice.send("NOTICE bob :hi")
        self.assertEqual(self.alice.lines(), [])
        self.alice.send("WHOIS bob")
        whois = self.alice.messages()
        self.assertIn(("301", ["bob", "gone to lunch"]), [(m.command, m.params[1:])
                                                          for m in whois])
        self.alice.send("WHO #dev")
        flags = {m.params[5]: m.params[6] for m in self.alice.messages() if m.command == "352"}
        self.assertEqual(flags["bob"][0], "G")
        self.assertEqual(flags["alice"][0], "H")

    def test_a_joiner_who_is_away_is_said_to_be(self):
        self.bob.send("AWAY :afk")
        self.carol.send("JOIN #new")
        self.dave.send("JOIN #new")
        for c in self.conns:
            c.lines()
        self.bob.send("JOIN #new")
        self.assertEqual([(m.command, m.params) for m in self.carol.messages()],
                         [("JOIN", ["#new"]), ("AWAY", ["afk"])])
        self.assertEqual(self.dave.commands(), ["JOIN"])

    def test_message_is_cleaned_and_bounded(self):
        member = self.hub.members["bob"]
        self.hub.set_away(member, "x\ry\x00z\x1b[31m\x02bold\x03" + "w" * 400)
        self.assertEqual(member.away, ("xyz[31mbold" + "w" * 400)[:300])
        self.hub.set_away(member, " \x01 ")
        self.assertIsNone(member.away)

    def test_advertised(self):
        c = IRCConn(self.factory, self.clock, 1)
        c.send("CAP LS 302", "NICK erin", "USER erin 0 * :e", "CAP END")
        msgs = c.messages()
        self.assertIn("away-notify", msgs[0].params[-1].split())
        tokens = [t for m in msgs if m.command == "005" for t in m.params[1:-1]]
        self.assertIn("AWAYLEN=300", tokens)


class RealnameTests(IRCTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.connect("alice", caps=("setname", "extended-join"))
        self.bob = self.connect("bob", caps=("setname",))
        self.carol = self.connect("carol")
        for c in (self.alice, self.bob, self.carol):
            c.send("JOIN #dev")
        for c in self.conns:
            c.lines()

    def test_user_realname_in_whois_who_and_extended_join(self):
        self.alice.send("WHOIS carol")
        (user,) = [m for m in self.alice.messages() if m.command == "311"]
        self.assertEqual(user.params[1:], ["carol", "carol", "chat.test", "*", "carol real"])
        self.alice.send("WHO #dev")
        who = {m.params[5]: m.params[-1] for m in self.alice.messages() if m.command == "352"}
        self.assertEqual(who["bob"], "0 bob real")
        self.carol.send("PART #dev", "JOIN #dev")
        self.assertEqual(self.alice.lines()[-1],
                         ":carol!carol@chat.test JOIN #dev * :carol real")

    def test_setname_to_oneself_and_neighbours_with_the_cap(self):
        self.bob.send("SETNAME :Bob \x02the\x02 Builder")
        line = ":bob!bob@chat.test SETNAME :Bob the Builder"
        self.assertEqual(self.bob.lines(), [line])
        self.assertEqual(self.alice.lines(), [line])  # once, though two rooms are shared
        self.assertEqual(self.carol.lines(), [])
        self.carol.send("WHOIS bob")
        (user,) = [m for m in self.carol.messages() if m.command == "311"]
        self.assertEqual(user.params[-1], "Bob the Builder")

    def test_setname_refusals(self):
        for text in ("", "\x03", "x" * 65):
            self.bob.send("SETNAME :" + text)
            self.assertEqual([(m.command, m.params[:2]) for m in self.bob.messages()],
                             [("FAIL", ["SETNAME", "INVALID_REALNAME"])])
        self.assertEqual(self.hub.members["bob"].realname, "bob real")

    def test_whowas(self):
        self.bob.send("NICK robert")
        self.carol.send("QUIT :bye")
        self.clock.advance(5)
        self.alice.lines()
        self.alice.send("WHOWAS bob", "WHOWAS carol 1", "WHOWAS nobody")
        got = [(m.command, m.params[1:]) for m in self.alice.messages()]
        self.assertEqual(got[0], ("314", ["bob", "bob", "chat.test", "*", "bob real"]))
        self.assertEqual(got[1][0], "312")
        self.assertEqual(got[2], ("369", ["bob", "End of WHOWAS"]))
        self.assertEqual([c for c, _ in got[3:6]], ["314", "312", "369"])
        self.assertEqual(got[6:], [("406", ["nobody", "There was no such nickname"]),
                                   ("369", ["nobody", "End of WHOWAS"])])
        # The guest names connections start with are never recorded.
        self.alice.send("WHOWAS guest1")
        self.assertEqual(self.alice.commands(), ["406", "369"])


class BrokenStoreTests(IRCTestCase):
    def test_a_read_that_cannot_start_is_a_failed_read_and_the_connection_goes_on(self):
        class NoPaging(MemoryHistory):
            def page(self, *args, **kwargs):
                raise AttributeError("this store cannot page")

        self.hub.history = NoPaging()
        a = self.connect("alice")
        a.send("JOIN #dev", "CHATHISTORY LATEST #dev * 5")
        msgs = a.messages()
        self.assertEqual(msgs[-1].params[:4], ["CHATHISTORY", "MESSAGE_ERROR", "LATEST", "#dev"])
        b = self.connect("bob")
        b.send("JOIN #dev", "PRIVMSG #dev :still there?")
        self.assertEqual(a.messages()[-1].params, ["#dev", "still there?"])
