"""Listeners behind a load balancer that sends the PROXY header
(``--port haproxy:tcp:...``, and ``--irc``, ``--web``): the chat knows each
client by the address in its header, for per-address limits, bans and logs.

Units drive twisted_chat.proxyheader over StringTransport and a Clock; the
rest talks to a real ``twistd chat`` over loopback, where every client
comes from 127.0.0.1 and only its header tells them apart.
"""

import socket
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import proxyheader
from twisted_chat.delivery import directwrite
from twisted_chat.delivery.outlet import BoundedOutput
from twisted_chat.tap import Options

from .support import ChatServer, LineClient
from .test_irc_server import IRC_LISTENING, IRCLineClient
from .web_support import WSClient, web_port


def v1(source, port=40000):
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 5000\r\n".encode()


def v2(source, port=40000):
    """A PROXY protocol v2 header: TCP over IPv4, ``source`` to 127.0.0.1:5000."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack(
        "!HH", port, 5000)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses))
            + addresses)


class _Recorder(Protocol):
    def __init__(self):
        self.peer = None
        self.data = []
        self.lost = False

    def connectionMade(self):
        self.peer = self.transport.getPeer()

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.lost = True


class HeaderFirstTests(SynchronousTestCase):
    def connect(self):
        self.clock = Clock()
        self.chat = _Recorder()
        factory = proxyheader.HeaderFirstFactory(Factory.forProtocol(lambda: self.chat),
                                                 self.clock)
        wrapper = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1234))
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_the_chat_starts_after_the_header_and_sees_the_client_address(self):
        wrapper, transport = self.connect()
        self.assertIsNone(self.chat.peer)  # not connected before the header
        wrapper.dataReceived(v1("203.0.113.7")[:20])
        self.assertIsNone(self.chat.peer)
        wrapper.dataReceived(v1("203.0.113.7")[20:] + b"/nick ann\r\n")
        self.assertEqual((self.chat.peer.host, self.chat.peer.port), ("203.0.113.7", 40000))
        self.assertEqual(self.chat.data, [b"/nick ann\r\n"])
        wrapper.dataReceived(b"hello\r\n")
        self.assertEqual(self.chat.data[-1], b"hello\r\n")
        self.clock.advance(proxyheader.HEADER_TIMEOUT * 2)  # the header came: no timeout
        self.assertFalse(transport.disconnecting)
        wrapper.connectionLost(None)
        self.assertTrue(self.chat.lost)

    def test_version_2_headers(self):
        wrapper, _ = self.connect()
        wrapper.dataReceived(v2("198.51.100.9", 41000))
        self.assertEqual((self.chat.peer.host, self.chat.peer.port), ("198.51.100.9", 41000))
        self.assertEqual(self.chat.data, [])

    def test_no_header_in_time_closes_without_the_chat(self):
        wrapper, transport = self.connect()
        self.clock.advance(proxyheader.HEADER_TIMEOUT - 0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(None)
        self.assertIsNone(self.chat.peer)
        self.assertFalse(self.chat.lost)

    def test_a_bad_header_closes_without_the_chat(self):
        for data in (b"/nick ann\r\nhello there\r\n", b"PROXY TCP4 nonsense\r\n/nick x\r\n"):
            wrapper, transport = self.connect()
            wrapper.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)
            wrapper.connectionLost(None)
            self.assertIsNone(self.chat.peer, data)
            self.assertEqual(self.chat.data, [], data)
            self.assertFalse(self.chat.lost, data)
            self.assertEqual(self.clock.getDelayedCalls(), [], data)

    def test_writes_go_to_the_transport_underneath(self):
        wrapper, transport = self.connect()
        wrapper.dataReceived(v1("203.0.113.7"))
        self.assertIs(directwrite.under(wrapper), transport)
        self.assertIs(directwrite.under(transport), transport)
        output = BoundedOutput(wrapper, 1000, lambda: None)
        self.assertIs(output.transport, transport)
        self.assertIs(transport.producer, output)
        output.write(b"hi\r\n")
        self.assertEqual(transport.value(), b"hi\r\n")

    def test_options(self):
        options = Options()
        options.parseOptions(["--db", ":memory:", "--port", "haproxy:tcp:5000",
                              "--irc", "HAPROXY:tcp:6667", "--web", "tcp:8080"])
        self.assertIsInstance(options["endpoints"][0], proxyheader.ProxyHeaderEndpoint)
        self.assertIsInstance(options["irc-endpoints"][0], proxyheader.ProxyHeaderEndpoint)
        self.assertNotIsInstance(options["web-endpoints"][0], proxyheader.ProxyHeaderEndpoint)
        # the listen backlog goes to the TCP endpoint inside
        self.assertEqual(options["endpoints"][0]._endpoint._backlog, options["listen-backlog"])
        with self.assertRaises(UsageError) as e:
            Options().parseOptions(["--port", "haproxy:ssl:5001:privateKey=k.pem"])
        self.assertIn("the PROXY header comes before TLS", str(e.exception))


class ProxiedServerTests(SynchronousTestCase):
    """A real server behind a (pretend) balancer: every client is 127.0.0.1
    on the wire and someone else in its header."""

    def setUp(self):
        self.server = ChatServer(
            "--max-per-ip", "1", "--irc", "haproxy:tcp:0:interface=127.0.0.1",
            "--web", "haproxy:tcp:0:interface=127.0.0.1",
            port="haproxy:tcp:0:interface=127.0.0.1").start()
        self.addCleanup(self.server.stop)

    def client(self, header, nick):
        c = LineClient(self.server.port)
        self.addCleanup(c.close)
        c.send_raw(header)
        c.json_mode(nick)
        return c

    def test_line_clients_are_known_by_their_header(self):
        ann = self.client(v1("203.0.113.7"), "ann")
        bob = self.client(v2("198.51.100.9"), "bob")  # not refused: another address
        self.server.logged(r"connect 203\.0\.113\.7:40000 as ")
        self.server.logged(r"connect 198\.51\.100\.9:40000 as ")
        # another client from ann's address is one too many (--max-per-ip 1)
        again = LineClient(self.server.port)
        self.addCleanup(again.close)
        again.send_raw(v1("203.0.113.7", 40001))
        again.expect_text("too many connections from your address")
        again.closed()
        # a ban by address bans bob's, not everyone behind the balancer
        ann.send("/join dev")
        ann.expect_event("names", room="dev")
        bob.send("/join dev")
        ann.expect_event("join", nick="bob")
        ann.send("/ban dev bob", "/ban dev", "/kick dev bob")
        [ban] = ann.expect_event("bans")["bans"]
        self.assertEqual(ban["entry"], "address:198.51.100.9")
        bob.expect_event("kick", nick="bob")
        bob.send("/join dev")
        self.assertEqual(bob.expect_event("error")["code"], "banned")
        carol = self.client(v1("192.0.2.3"), "carol")
        carol.send("/join dev")
        carol.expect_event("names", room="dev")

    def test_without_a_header_a_connection_is_closed(self):
        c = LineClient(self.server.port)
        self.addCleanup(c.close)
        c.send("/nick ann", "hello")
        c.closed()
        self.server.logged(r"127\.0\.0\.1:\d+: no valid PROXY header: closed")
        self.assertEqual(self.server.grep(r"connect 127\.0\.0\.1"), [])

    def test_irc_and_web_clients_too(self):
        irc_port = int(self.server.logged(IRC_LISTENING).split("tcp:")[1].split(":")[0])
        irc = IRCLineClient(irc_port)
        self.addCleanup(irc.close)
        irc.send_raw(v1("203.0.113.7"))
        irc.register("ircann")
        self.server.logged(r"irc connect 203\.0\.113\.7:40000")
        ws = WSClient(web_port(self.server), preamble=v1("198.51.100.9"),
                      origin=None)
        self.addCleanup(ws.close)
        ws.expect_event("welcome")
        self.server.logged(r"connect 198\.51\.100\.9:40000 as ")
        # the per-address limit counts each face's clients by their header
        again = IRCLineClient(irc_port)
        self.addCleanup(again.close)
        again.send_raw(v1("198.51.100.9", 40002))
        again.expect(lambda line: "too-many-connections" in line)
