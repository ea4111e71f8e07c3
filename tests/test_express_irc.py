"""The express path for IRC members: a room's share in the IRC rendering of
each tag variant, sent to idle IRC sockets in bulk with everybody else's.

Real loopback connections as in ``tests/test_express.py`` (whose audit of
every flush, tests/express_support.py, applies here too): a member holding the express handle must be
one whose share the normal path would also write straight to its socket.
IRC members share a hub and a turn with line-protocol members.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from twisted_chat.faces.irc.message import parse
from twisted_chat.faces.irc.protocol import IRCFactory
from twisted_chat.replay import RecentMessages

from .express_support import ExpressTestCase, TCPConn


class IRCExpressTestCase(ExpressTestCase):
    def setUp(self):
        super().setUp()
        self.hub.server_name = "chat.test"
        self.irc = IRCFactory(self.hub, turn=self.factory.turn, rate=1e6, burst=10 ** 6,
                              max_backlog=64 << 20)
        self.conns = []

    def connect(self, nick, *args):
        c = super().connect(nick, *args)
        self.settle(c)
        return c

    def settle(self, c):
        """Everybody has read what was said until ``c`` was there."""
        self.conns.append(c)
        for each in self.conns:
            each.lines()

    def irc_connect(self, nick, caps=()):
        c = TCPConn(self, self.listener, self.irc)
        if caps:
            c.send("CAP REQ :" + " ".join(caps))
        c.send(f"NICK {nick}")
        c.send(f"USER {nick} 0 * :{nick}")
        if caps:
            c.send("CAP END")
        self.settle(c)
        return c

    def privmsgs(self, c):
        return [m.params[-1] for m in map(parse, c.lines()) if m.command == "PRIVMSG"]

    def said(self, c):
        """(source, command, params) of each line ``c`` got."""
        return [(m.source, m.command, m.params) for m in map(parse, c.lines())]


class IRCExpressTests(IRCExpressTestCase):
    def test_a_registered_irc_member_is_express_and_gets_the_share(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        c = self.irc_connect("carol", caps=("server-time", "message-tags"))
        line = self.connect("dave")
        for conn in (a, b, c):
            self.assertIs(conn.member.express, conn.transport.socket)
            self.assertIs(conn.member.sink, conn.proto.outlet)
        self.assertEqual(a.member.express_via, b.member.express_via)
        self.assertNotEqual(a.member.express_via, c.member.express_via)
        audited = self.audited
        a.send("PRIVMSG #lobby :hello")
        line.send("from the line")
        self.assertEqual(self.said(b), [
            ("alice!alice@chat.test", "PRIVMSG", ["#lobby", "hello"]),
            ("dave!dave@chat.test", "PRIVMSG", ["#lobby", "from the line"])])
        tagged = [parse(x) for x in c.lines()]
        self.assertEqual([m.params for m in tagged],
                         [["#lobby", "hello"], ["#lobby", "from the line"]])
        for m in tagged:
            self.assertIn("time", m.tags)
            self.assertIn("msgid", m.tags)
        self.assertEqual(self.said(a), [
            ("dave!dave@chat.test", "PRIVMSG", ["#lobby", "from the line"])])
        self.assertEqual(line.texts(), ["hello", "from the line"])
        self.assertGreater(self.audited, audited)
        for conn in (a, b, c):
            self.assertIs(conn.member.express, conn.transport.socket)

    def test_not_before_registration(self):
        c = TCPConn(self, self.listener, self.irc)
        c.send("NICK early")
        self.assertIsNone(c.member)  # the outlet has no member until 001
        self.assertIsNone(c.proto.member.sink)
        self.assertIsNone(c.proto.member.express)
        a = self.irc_connect("alice")
        a.send("PRIVMSG #lobby :before you came")
        c.send("USER early 0 * :E")
        self.assertIs(c.member.express, c.transport.socket)
        a.send("PRIVMSG #lobby :after")
        self.assertEqual(self.privmsgs(c), ["after"])

    def test_other_transports_never_are(self):
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5))
        proto = self.irc.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        proto.dataReceived(b"NICK sam\r\nUSER sam 0 * :S\r\n")
        self.clock.advance(0)
        self.assertIs(proto.member.sink, proto.outlet)
        self.assertIsNone(proto.member.express)
        a = self.irc_connect("alice")
        a.send("PRIVMSG #lobby :hi")
        self.assertIn(b":alice!alice@chat.test PRIVMSG #lobby hi\r\n", transport.value())

    def test_echo_message_gets_the_shared_line_and_others_no_echo(self):
        a = self.irc_connect("alice", caps=("echo-message",))
        b = self.irc_connect("bob")
        self.assertEqual(a.member.express_via, b.member.express_via)  # no tag of its own
        a.send("PRIVMSG #lobby :one")
        b.send("PRIVMSG #lobby :two")
        self.assertEqual(self.privmsgs(a), ["one", "two"])
        self.assertEqual(self.privmsgs(b), ["one"])

    def test_a_queued_reply_clears_it_until_the_turn_is_written(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        b.proto.dataReceived(b"PING :p\r\n")
        self.assertIsNone(b.member.express)
        b.proto.dataReceived(b"LUSERS\r\n")  # numerics of the face's own
        a.proto.dataReceived(b"PRIVMSG #lobby :m1\r\n")
        self.clock.advance(0)
        self.assertEqual([m.command for m in map(parse, b.lines())],
                         ["PONG", "251", "254", "255", "265", "266", "PRIVMSG"])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_paused_output_holds_the_share_and_comes_back_in_order(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        b.proto.outlet.output.pauseProducing()
        self.assertIsNone(b.member.express)
        a.send("PRIVMSG #lobby :m1")
        a.send("PRIVMSG #lobby :m2")
        self.assertEqual(b.lines(), [])
        b.proto.outlet.output.resumeProducing()
        b.drain()
        a.send("PRIVMSG #lobby :m3")
        self.assertEqual(self.privmsgs(b), ["m1", "m2", "m3"])
        a.send("PRIVMSG #lobby :m4")
        self.assertIs(b.member.express, b.transport.socket)
        self.assertEqual(self.privmsgs(b), ["m4"])

    def test_what_a_socket_does_not_take_waits_and_later_shares_go_behind(self):
        line, b = self.connect("alice"), self.irc_connect("bob")
        sent = self.fill(line, b)  # about 130 PRIVMSG lines each
        line.send("tail")
        got = self.receive(b, self.privmsgs, lambda got: got and got[-1] == "tail")
        starts = [t.split(" ", 1)[0] for t in got if not t.startswith("x")]
        self.assertEqual(starts, [str(i) for i in range(len(sent))] + ["tail"])
        self.assertEqual("".join(got[:-1]).replace(" ", ""), "".join(sent).replace(" ", ""))
        line.send("after")
        self.assertEqual(self.privmsgs(b), ["after"])
        self.assertIs(b.member.express, b.transport.socket)

    def test_a_slow_consumer_is_cut_as_before(self):
        self.irc.max_backlog = 100_000
        line, b, c = self.connect("alice"), self.irc_connect("bob"), self.irc_connect("carol")
        b.proto.outlet.output.limit = 100_000
        self.overflow(line, b, c)
        self.assertIsNone(b.proto.member)  # cut: left the hub
        self.assertEqual(self.hub.counts.slow_consumers, 1)
        self.assertIsNone(b.proto.outlet.member.express)
        line.send("still")
        self.assertEqual(self.privmsgs(c)[-1:], ["still"])

    def test_quit_clears_it_and_the_quitter_gets_error_not_its_quit(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        b.send("QUIT :bye")
        self.assertIsNone(b.proto.outlet.member.express)
        self.assertEqual([m.command for m in map(parse, b.lines())], ["ERROR"])
        self.assertEqual(a.lines(), [":bob!bob@chat.test QUIT :Quit: bye"])
        a.send("PRIVMSG #lobby :later")
        self.assertEqual(b.lines(), [])

    def test_a_capability_change_moves_it_to_the_other_group(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        before = b.member.express_via
        b.send("CAP REQ server-time")
        b.lines()
        self.assertNotEqual(b.member.express_via, before)
        self.assertEqual(b.member.express_via[1], b.proto.outlet.mode)
        self.assertIs(b.member.express, b.transport.socket)
        a.send("PRIVMSG #lobby :hi")
        (m,) = map(parse, b.lines())
        self.assertIn("time", m.tags)
        b.send("CAP REQ -server-time")
        b.lines()
        self.assertEqual(b.member.express_via, before)

    def test_own_nick_and_join_are_rendered_for_the_member(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        a.send("JOIN #dev")
        b.send("JOIN #dev")
        a.send("TOPIC #dev :the topic")
        a.lines(), b.lines()
        b.send("NICK robert")
        self.assertEqual(a.lines(), [":bob!bob@chat.test NICK robert"])
        self.assertEqual(b.lines(), [":bob!bob@chat.test NICK robert"])
        b.send("LUSERS")
        self.assertEqual({m.params[0] for m in map(parse, b.lines())}, {"robert"})
        # A join's answer is still JOIN, names and the topic as 332/333.
        a.send("PART #dev")
        a.lines(), b.lines()
        a.send("JOIN #dev")
        self.assertEqual([m.command for m in map(parse, a.lines())],
                         ["JOIN", "353", "366", "332", "333"])
        self.assertEqual(b.lines(), [":alice!alice@chat.test JOIN #dev"])
        a.send("TOPIC #dev :new topic")
        for conn in (a, b):
            self.assertEqual(conn.lines(), [":alice!alice@chat.test TOPIC #dev :new topic"])
        for conn in (a, b):
            self.assertIs(conn.member.express, conn.transport.socket)

    def test_shutdown_keeps_the_member_in_its_room_but_not_express(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        b.proto.outlet.shutdown("server shutting down")
        self.assertIsNone(b.member.express)
        self.assertIn(b.member, list(self.hub.rooms.values())[0].members)
        self.assertEqual([m.command for m in map(parse, b.lines())], ["ERROR"])
        a.send("PRIVMSG #lobby :after shutdown")
        self.assertEqual(b.lines(), [])

    def test_no_line_can_inject_another(self):
        a, b = self.irc_connect("alice"), self.irc_connect("bob")
        line = self.connect("dave")
        a.send("PRIVMSG #lobby :one\rQUIT :two\x00three")
        line.send("four\r:evil 001 bob :x")
        for raw in b.lines():
            self.assertTrue(raw.startswith(":alice!") or raw.startswith(":dave!"), raw)
            self.assertNotIn("\r", raw)
            self.assertNotIn("\0", raw)

    def test_a_channel_message_is_rendered_once_per_variant(self):
        plain = [self.irc_connect(f"p{i}") for i in range(4)]
        timed = [self.irc_connect(f"t{i}", caps=("server-time",)) for i in range(3)]
        calls = []
        renderer = self.irc.renderer
        shared = renderer.shared
        self.patch(renderer, "shared",
                   lambda event, variant: calls.append((event.type, variant)) or
                   shared(event, variant))
        plain[0].send("PRIVMSG #lobby :once")
        self.assertEqual(sorted(calls), [("message", (False, False, False, False)),
                                         ("message", (True, False, False, False))])
        for conn in plain[1:] + timed:
            self.assertEqual(self.privmsgs(conn), ["once"])

    def test_a_joiners_replay_is_its_own_in_a_batch_and_shared_without(self):
        from .test_irc_protocol import _ListHistory

        self.hub.history = _ListHistory()
        self.hub.replay = 10
        # As a server with a store: joiners share the replay's events.
        self.hub.recent = RecentMessages(10, clock=self.clock.seconds)
        line = self.connect("alice")
        line.send("earlier one")
        line.send("earlier two")
        carol = self.irc_connect("carol", caps=("batch",))
        dave = self.irc_connect("dave")
        erin = self.irc_connect("erin", caps=("batch",))
        frank = self.irc_connect("frank")
        for conn in (carol, dave, erin, frank):
            conn.send("PART #lobby")
            conn.lines()
            conn.send("JOIN #lobby")
        for conn in (dave, frank):
            got = [m for m in map(parse, conn.lines()) if m.command in ("PRIVMSG", "BATCH")]
            self.assertEqual([m.command for m in got], ["PRIVMSG", "PRIVMSG"])
            self.assertEqual([m.params[-1][-11:] for m in got], ["earlier one", "earlier two"])
            self.assertFalse(any("batch" in m.tags for m in got))
        for conn in (carol, erin):
            got = [m for m in map(parse, conn.lines()) if m.command in ("PRIVMSG", "BATCH")]
            self.assertEqual([m.command for m in got], ["BATCH", "PRIVMSG", "PRIVMSG", "BATCH"])
            ref = got[0].params[0][1:]
            self.assertEqual([m.tags.get("batch") for m in got[1:3]], [ref, ref])
            self.assertEqual(got[3].params[0], "-" + ref)
