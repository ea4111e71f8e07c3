"""Unit tests of the limits (token bucket, bounded output, connection counts)
and of the protocol's output path, driven by StringTransport and a fake clock."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import events, limits
from twisted_chat.delivery.outlet import BoundedOutput
from twisted_chat.delivery.turn import ConnectionLimits
from twisted_chat.hub import Hub
from twisted_chat.protocol import ChatFactory


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self):
        clock = Clock()
        bucket = limits.TokenBucket(rate=2, burst=3, clock=clock)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.25)  # half a token
        self.assertFalse(bucket.take())
        clock.advance(0.25)  # the other half
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())

    def test_refill_is_capped_at_burst(self):
        clock = Clock()
        bucket = limits.TokenBucket(rate=10, burst=2, clock=clock)
        clock.advance(3600)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])

    def test_refused_lines_do_not_cost(self):
        clock = Clock()
        bucket = limits.TokenBucket(rate=1, burst=1, clock=clock)
        self.assertTrue(bucket.take())
        for _ in range(100):
            self.assertFalse(bucket.take())
        clock.advance(1.0)
        self.assertTrue(bucket.take())

    def test_zero_rate_means_unlimited(self):
        bucket = limits.TokenBucket(rate=0, burst=1, clock=Clock())
        self.assertTrue(all(bucket.take() for _ in range(10000)))


class BoundedOutputTests(SynchronousTestCase):
    def setUp(self):
        self.transport = StringTransport()
        self.overflows = []
        self.out = BoundedOutput(self.transport, 100, lambda: self.overflows.append(1))

    def test_registers_as_streaming_producer(self):
        self.assertIs(self.transport.producer, self.out)
        self.assertTrue(self.transport.streaming)

    def test_writes_through_while_not_paused(self):
        self.out.write(b"abc")
        self.assertEqual(self.transport.value(), b"abc")

    def test_paused_queues_and_resume_drains_in_order(self):
        self.out.pauseProducing()
        self.out.write(b"one ")
        self.out.write(b"two")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.out.backlog_bytes, 7)
        self.out.resumeProducing()
        self.assertEqual(self.transport.value(), b"one two")
        self.assertEqual(self.out.backlog_bytes, 0)

    def test_resume_stops_when_paused_again(self):
        self.out.pauseProducing()
        for chunk in (b"a" * 10, b"b" * 10, b"c" * 10):
            self.out.write(chunk)
        writes = []

        def write(data):
            writes.append(data)
            self.out.pauseProducing()  # the transport's buffer filled up again

        self.transport.write = write
        self.out.resumeProducing()
        self.assertEqual(writes, [b"a" * 10])
        self.assertEqual(self.out.backlog_bytes, 20)

    def test_overflow_drops_backlog_and_unregisters(self):
        self.out.pauseProducing()
        self.out.write(b"x" * 100)
        self.assertEqual(self.overflows, [])
        self.out.write(b"y")
        self.assertEqual(self.overflows, [1])
        self.assertEqual(self.out.backlog_bytes, 0)
        self.assertIsNone(self.transport.producer)
        self.out.write(b"z" * 1000)  # later writes vanish
        self.assertEqual(self.out.backlog_bytes, 0)
        self.assertEqual(self.overflows, [1])

    def test_close_hands_backlog_to_transport(self):
        self.out.pauseProducing()
        self.out.write(b"last words")
        self.out.close()
        self.assertEqual(self.transport.value(), b"last words")
        self.assertIsNone(self.transport.producer)


class ConnectionLimitsTests(SynchronousTestCase):
    def test_total_and_per_host(self):
        lim = ConnectionLimits(max_clients=3, max_per_ip=2)
        self.assertIsNone(lim.admit("10.0.0.1"))
        self.assertIsNone(lim.admit("10.0.0.1"))
        self.assertEqual(lim.admit("10.0.0.1"), "too-many-connections")
        self.assertIsNone(lim.admit("10.0.0.2"))
        self.assertEqual(lim.admit("10.0.0.3"), "server-full")
        lim.release("10.0.0.1")
        self.assertIsNone(lim.admit("10.0.0.1"))
        lim.release("10.0.0.2")
        self.assertNotIn("10.0.0.2", lim.per_host)

    def test_zero_means_unlimited_and_unix_peers_have_no_host(self):
        lim = ConnectionLimits(max_clients=0, max_per_ip=0)
        for _ in range(1000):
            self.assertIsNone(lim.admit("10.0.0.1"))
        lim = ConnectionLimits(max_clients=5, max_per_ip=1)
        self.assertIsNone(lim.admit(None))
        self.assertIsNone(lim.admit(None))


class Harness:
    """A ChatFactory on a fake reactor with StringTransport connections."""

    def __init__(self, **kw):
        self.clock = MemoryReactorClock()
        self.hub = Hub(clock=self.clock.seconds)
        self.factory = ChatFactory(self.hub, clock=self.clock, **kw)
        self._port = 40000

    def connect(self, host="10.0.0.1", nick=None, json=True):
        self._port += 1
        addr = IPv4Address("TCP", host, self._port)
        proto = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        if json:
            proto.dataReceived(b"/mode json\r\n")
        if nick:
            proto.dataReceived(f"/nick {nick}\r\n".encode())
        self.turn()
        return proto, transport

    def turn(self):
        self.clock.advance(0)

    def lose(self, proto):
        proto.connectionLost(Failure(ConnectionDone()))
        self.turn()


def lines(transport):
    return transport.value().decode("utf-8").split("\r\n")[:-1]


class OutputPathTests(SynchronousTestCase):
    def test_paused_reader_is_cut_off_and_others_are_not_delayed(self):
        h = Harness(max_backlog=2000, rate=0)
        slow, slow_t = h.connect(nick="slow")
        alice, alice_t = h.connect(nick="alice")
        bob, bob_t = h.connect(nick="bob")
        slow.output.pauseProducing()  # its transport's buffer is full
        sent_before = len(slow_t.value())
        for i in range(30):
            alice.dataReceived(f"message {i} {'x' * 80}\r\n".encode())
            h.turn()
            # bob gets every message in the same turn it was sent
            self.assertIn(f"message {i} ".encode(), bob_t.value())
        self.assertEqual(len(slow_t.value()), sent_before + len(
            b'{"type":"bye","reason":"too slow: output backlog full"}\r\n'))
        self.assertTrue(slow_t.disconnecting)
        self.assertIsNone(slow.member)
        self.assertNotIn("slow", h.hub.members)
        self.assertEqual(h.hub.counts.slow_consumers, 1)  # for --metrics
        self.assertIn(b'"type":"quit"', bob_t.value())
        self.assertIn(b'"nick":"slow"', bob_t.value())
        # A slow consumer that never closes is aborted after a while.
        self.assertFalse(slow_t.disconnected)
        h.clock.advance(limits.CLOSE_TIMEOUT)
        self.assertTrue(slow_t.disconnected)
        h.lose(slow)
        self.assertEqual(h.factory.turn.limits.total, 2)

    def test_paused_reader_that_catches_up_loses_nothing(self):
        h = Harness(max_backlog=100000, rate=0)
        slow, slow_t = h.connect(nick="slow")
        alice, _ = h.connect(nick="alice")
        slow.output.pauseProducing()
        for i in range(50):
            alice.dataReceived(f"m{i}\r\n".encode())
            h.turn()
        slow.output.resumeProducing()
        texts = [line for line in lines(slow_t) if '"type":"message"' in line]
        self.assertEqual([f'"text":"m{i}"' in t for i, t in enumerate(texts)], [True] * 50)

    def test_rate_limit_drops_lines_with_one_error_per_stretch(self):
        h = Harness(rate=1, burst=3)
        alice, alice_t = h.connect(nick="alice")  # /mode and /nick spent 2 tokens
        bob, bob_t = h.connect(nick="bob")
        for i in range(3):
            alice.dataReceived(f"flood {i}\r\n".encode())
        alice.dataReceived(b"/nick storm\r\n\xff\xfe\r\n/help\r\n" + b"x" * 5000 + b"\r\n")
        h.turn()
        self.assertIn(b'"text":"flood 0"', bob_t.value())
        self.assertNotIn(b"flood 1", bob_t.value())
        self.assertNotIn(b"storm", bob_t.value())
        # Dropped lines cost no work: no nick change, no help, no
        # bad-encoding or line-too-long, and a single rate-limited error.
        self.assertEqual(alice_t.value().count(b'"code":"rate-limited"'), 1)
        for absent in (b'"type":"nick","old":"alice"', b'"type":"info"', b"bad-encoding",
                       b"line-too-long"):
            self.assertNotIn(absent, alice_t.value())
        h.clock.advance(1.0)
        alice.dataReceived(b"later\r\n")
        h.turn()
        self.assertIn(b'"text":"later"', bob_t.value())
        alice.dataReceived(b"again\r\nand again\r\n")  # a new stretch: a new error
        h.turn()
        self.assertEqual(alice_t.value().count(b'"code":"rate-limited"'), 2)

    def test_blank_lines_are_free(self):
        h = Harness(rate=1, burst=3)
        alice, alice_t = h.connect(nick="alice")
        bob, bob_t = h.connect(nick="bob")
        alice.dataReceived(b"\r\n   \n\t\r\n" * 1000 + b"still allowed\r\n")
        h.turn()
        self.assertIn(b'"text":"still allowed"', bob_t.value())
        self.assertNotIn(b"rate-limited", alice_t.value())

    def test_quit_is_never_rate_limited(self):
        h = Harness(rate=1, burst=1)
        alice, alice_t = h.connect(nick=None, json=False)
        alice.dataReceived(b"one\r\ntwo\r\n/quit bye now\r\n")
        h.turn()
        self.assertIn(b"rate-limited", alice_t.value())
        self.assertIn(b"-- bye: goodbye", alice_t.value())
        self.assertTrue(alice_t.disconnecting)

    def test_connection_limits_refuse_with_error_and_close(self):
        h = Harness(max_clients=3, max_per_ip=2)
        a, _ = h.connect("10.0.0.1", nick="a")
        b, _ = h.connect("10.0.0.1", nick="b")
        c, c_t = h.connect("10.0.0.1", json=False)
        self.assertEqual(lines(c_t)[0].split(":")[0], "!! too-many-connections")
        self.assertTrue(c_t.disconnecting)
        self.assertIsNone(c.member)
        d, _ = h.connect("10.0.0.2", nick="d")
        e, e_t = h.connect("10.0.0.3", json=False)
        self.assertEqual(lines(e_t)[0].split(":")[0], "!! server-full")
        h.lose(c)
        h.lose(e)
        self.assertEqual(sorted(h.hub.members), ["a", "b", "d"])
        self.assertEqual(h.factory.turn.limits.total, 3)
        h.lose(a)
        f, f_t = h.connect("10.0.0.1", nick="f")
        self.assertIn(b'"type":"welcome"', f_t.value())

    def test_idle_timeout(self):
        h = Harness(idle_timeout=30)
        alice, alice_t = h.connect(nick="alice")
        h.clock.advance(20)
        alice.dataReceived(b"/ping\r\n")
        h.clock.advance(20)
        self.assertFalse(alice_t.disconnecting)
        h.clock.advance(11)
        self.assertTrue(alice_t.disconnecting)
        self.assertIn(b'"reason":"idle timeout"', alice_t.value())

    def test_no_idle_timeout_by_default(self):
        h = Harness()
        alice, alice_t = h.connect(nick="alice")
        h.clock.advance(7 * 24 * 3600)
        self.assertFalse(alice_t.disconnecting)

    def test_shutdown_says_bye_and_waits_for_close(self):
        h = Harness()
        conns = [h.connect(nick=f"u{i}") for i in range(3)]
        conns[0][0].output.pauseProducing()  # a slow one: bye goes after its backlog
        conns[0][0].deliver(events.info("queued"))
        h.turn()
        d = h.factory.turn.shutdown(timeout=5)
        fired = []
        d.addCallback(fired.append)
        for proto, t in conns:
            self.assertTrue(t.value().endswith(
                b'{"type":"bye","reason":"server shutting down"}\r\n'), t.value()[-200:])
            self.assertTrue(t.disconnecting)
            self.assertNotIn(b'"type":"quit"', t.value()[-200:])
        h.lose(conns[1][0])
        h.lose(conns[2][0])
        self.assertEqual(fired, [])
        h.clock.advance(5)  # the slow one never closes: aborted
        self.assertEqual(fired, [None])
        self.assertTrue(conns[0][1].disconnected)


class SocketOptionTests(SynchronousTestCase):
    def test_accepted_tcp_sockets_get_keepalive_and_nodelay(self):
        import socket

        sock = socket.socket()
        self.addCleanup(sock.close)

        class TCPish(StringTransport):
            def setTcpKeepAlive(self, on):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(on))

            def setTcpNoDelay(self, on):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))

            def getHandle(self):
                return sock

        h = Harness()
        addr = IPv4Address("TCP", "10.0.0.1", 5555)
        proto = h.factory.buildProtocol(addr)
        proto.makeConnection(TCPish(peerAddress=addr))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 60)


class BadInputEdgeTests(SynchronousTestCase):
    """Edges of the core's line handling that the limits rely on."""

    def setUp(self):
        self.h = Harness(max_line=64, rate=0)
        self.alice, self.alice_t = self.h.connect(nick="alice")
        self.bob, self.bob_t = self.h.connect(nick="bob")

    def feed(self, *chunks):
        for chunk in chunks:
            self.alice.dataReceived(chunk)
        self.h.turn()

    def said(self):
        return [json.loads(line)["text"] for line in lines(self.bob_t)
                if '"type":"message"' in line]

    def errors(self):
        return [json.loads(line)["code"] for line in lines(self.alice_t)
                if '"type":"error"' in line]

    def test_two_long_lines_in_a_row_byte_by_byte(self):
        data = b"a" * 100 + b"\r\n" + b"b" * 100 + b"\nok\r\n"
        self.feed(*[data[i:i + 1] for i in range(len(data))])
        self.assertEqual(self.said(), ["ok"])
        self.assertEqual(self.errors(), ["line-too-long", "line-too-long"])

    def test_limit_is_exact_for_lf_and_crlf(self):
        self.feed(b"c" * 64 + b"\n", b"d" * 64 + b"\r\n", b"e" * 65 + b"\n", b"f" * 65 + b"\r\n")
        self.assertEqual(self.said(), ["c" * 64, "d" * 64])
        self.assertEqual(self.errors(), ["line-too-long", "line-too-long"])

    def test_huge_unterminated_input_is_not_buffered(self):
        for _ in range(200):
            self.alice.dataReceived(b"z" * 65536)
        self.assertLess(len(self.alice._buffer), 1024)
        self.feed(b" end of the monster\nnext\n")
        self.assertEqual(self.said(), ["next"])
        self.assertEqual(self.errors(), ["line-too-long"])

    def test_bare_cr_inside_a_line_is_stripped(self):
        self.feed(b"one\rtwo\r\n")
        self.assertEqual(self.said(), ["onetwo"])

    def test_half_line_and_long_tail_at_disconnect(self):
        self.feed(b"x" * 100)  # inside a long line
        self.h.lose(self.alice)
        self.assertEqual(self.said(), [])
        self.assertIn(b'"reason":"disconnected"', self.bob_t.value())
        carol, _ = self.h.connect(nick="carol")
        carol.dataReceived(b"half a li")
        self.h.lose(carol)
        self.assertEqual(self.said(), [])
        self.assertEqual(sorted(self.h.hub.members), ["bob"])


class LimitOptionsTests(SynchronousTestCase):
    def parse(self, *args):
        from twisted_chat.tap import Options

        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *args])
        return options

    def test_defaults_are_the_documented_ones(self):
        o = self.parse()
        self.assertEqual((o["max-backlog"], o["rate"], o["burst"], o["max-clients"],
                          o["max-per-ip"], o["idle-timeout"], o["listen-backlog"],
                          o["shutdown-timeout"]),
                         (262144, 5.0, 20, 10000, 100, 0.0, 10000, 5.0))

    def test_bad_limits_are_usage_errors(self):
        from twisted.python.usage import UsageError

        for args in (["--max-backlog", "-1"], ["--rate", "-2"], ["--burst", "0"],
                     ["--max-clients", "-5"], ["--max-per-ip", "many"],
                     ["--idle-timeout", "-1"], ["--listen-backlog", "0"],
                     ["--shutdown-timeout", "-3"]):
            self.assertRaises(UsageError, self.parse, *args)

    def test_listen_backlog_goes_into_endpoints_without_one(self):
        from twisted_chat.tap import with_backlog

        self.assertEqual(with_backlog("tcp:5000", 77), "tcp:5000:backlog=77")
        self.assertEqual(with_backlog("tcp:5000:interface=127.0.0.1", 77),
                         "tcp:5000:interface=127.0.0.1:backlog=77")
        self.assertEqual(with_backlog("unix:/tmp/c.sock", 77), "unix:/tmp/c.sock:backlog=77")
        self.assertEqual(with_backlog("ssl:5001:privateKey=k.pem", 77),
                         "ssl:5001:privateKey=k.pem:backlog=77")
        self.assertEqual(with_backlog("tcp:5000:backlog=5", 77), "tcp:5000:backlog=5")
        o = self.parse("--listen-backlog", "321")
        self.assertEqual(o["endpoints"][0]._backlog, 321)

    def test_service_passes_limits_to_the_factory(self):
        from twisted_chat.tap import makeService

        service = makeService(self.parse("--max-backlog", "1234", "--rate", "7", "--burst", "9",
                                         "--max-clients", "11", "--max-per-ip", "3",
                                         "--idle-timeout", "30", "--shutdown-timeout", "2"))
        f = service.factory
        self.assertIs(f.turn, service.turn)
        self.assertEqual((f.max_backlog, f.rate, f.burst, f.turn.limits.max_clients,
                          f.turn.limits.max_per_ip, f.idle_timeout, service.shutdown_timeout),
                         (1234, 7, 9, 11, 3, 30, 2))
