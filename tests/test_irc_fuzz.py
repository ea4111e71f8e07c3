"""Property test of the IRC face: random byte streams from several IRC
connections never raise, and every connection receives only well-formed IRC
lines: UTF-8, CRLF-terminated, no NUL or lone CR, at most 512 bytes besides
tags, each one parsing as an IRC message."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.faces.irc import message
from twisted_chat.faces.irc.protocol import IRCFactory
from twisted_chat.hub import Hub

from .test_irc_protocol import _ListHistory

PIECES = [b"\r\n", b"\n", b"\r", b"NICK ", b"USER u 0 * :R\r\n", b"CAP LS 302\r\n",
          b"CAP REQ :server-time message-tags echo-message multi-prefix\r\n", b"CAP END\r\n",
          b"JOIN #dev", b"JOIN #a,#b k1,k2\r\n", b"PART #dev :x\r\n", b"PRIVMSG #dev :",
          b"PRIVMSG #lobby :", b"PRIVMSG alice :", b"NOTICE #dev :", b"\x01ACTION ",
          b"TOPIC #dev :", b"MODE #dev +mtnikl-ov+b key 3 alice bob\r\n", b"MODE #dev\r\n",
          b"KICK #dev alice :", b"INVITE bob #dev\r\n", b"WHO #dev\r\n", b"WHOIS alice\r\n",
          b"NAMES #dev\r\n", b"LIST\r\n", b"PING :x\r\n", b"QUIT :bye\r\n", b"alice", b"bob",
          b"@a=b;c=\\s\\:\\\\ ", b":src!u@h ", b"\x00", b"\xff\xfe", b"\xc3", "é".encode(),
          "Ａlice".encode(), b"\x1b[31m", b" :", b"x" * 300, b"AUTHENTICATE PLAIN\r\n",
          b"CAP REQ :batch draft/chathistory\r\n", b"CHATHISTORY LATEST #dev * 5\r\n",
          b"CHATHISTORY BEFORE #dev msgid=3 2\r\n", b"CHATHISTORY AROUND #dev msgid=",
          b"CHATHISTORY BETWEEN #dev timestamp=2023-11-14T22:13:20.000Z msgid=1 ",
          b"CHATHISTORY AFTER #lobby timestamp=", b"CHATHISTORY TARGETS * * 3\r\n",
          b"CHATHISTORY ", b"2023-11-14T22:13:20.000Z", b"msgid=99999999999999999999",
          b"CAP REQ :away-notify\r\n", b"AWAY :", b"AWAY\r\n", b"AWAY :back soon\r\n",
          b"WHO alice\r\n",
          b"CAP REQ :account-notify account-tag extended-join\r\n",
          b"CAP REQ :setname\r\n", b"SETNAME :", b"SETNAME :New Name\r\n", b"WHOWAS ",
          b"WHOWAS alice 3\r\n", b"NICK renamed\r\n"]

chunk = st.one_of(st.binary(max_size=40), st.sampled_from(PIECES),
                  st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join))
step = st.tuples(st.integers(0, 2), chunk, st.sampled_from([0, 0, 0, 0.3, 2.0, "lose"]))


class IRCFuzzTests(SynchronousTestCase):
    def check(self, data):
        if not data:
            return
        self.assertTrue(data.endswith(b"\r\n"), data[-80:])
        for raw in data.split(b"\r\n")[:-1]:
            self.assertNotIn(b"\0", raw)
            self.assertNotIn(b"\r", raw)
            self.assertNotIn(b"\n", raw)
            tags, body = message.split_tags(raw)
            self.assertLessEqual(len(body), 510, raw)
            message.parse(raw.decode("utf-8"))
            # A command that raised is caught and told as an internal error.
            self.assertNotIn(b"internal error", raw)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(step, max_size=30))
    def test_random_streams(self, steps):
        clock = Clock()
        clock.advance(1_700_000_000)
        hub = Hub(clock=clock.seconds, replay=3, history=_ListHistory())
        factory = IRCFactory(hub, clock=clock)
        conns = []
        for i in range(3):
            t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000 + i))
            p = factory.buildProtocol(t.getPeer())
            p.makeConnection(t)
            conns.append((p, t))
        # Two of them registered, so that there is traffic between members.
        for p, t in conns[:2]:
            p.dataReceived(f"NICK n{id(p) % 1000}\r\nUSER u 0 * :r\r\nJOIN #dev\r\n".encode())
        lost = set()
        for who, data, wait in steps:
            p, t = conns[who]
            if who in lost:
                continue
            if wait == "lose":
                p.connectionLost(Failure(ConnectionDone()))
                lost.add(who)
                continue
            p.dataReceived(data)
            clock.advance(wait)
        clock.advance(70)
        for p, t in conns:
            self.check(t.value())
