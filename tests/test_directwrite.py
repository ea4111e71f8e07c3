"""Direct writes to idle plain-TCP sockets, with the transport as fallback.

A real ``tcp.Server`` transport over a real loopback connection, driven by a
MemoryReactor (no reactor runs): what the socket receives and what the
transport keeps queued are both observable.
"""

import socket
import time

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_chat.delivery import directwrite

from .loopback import accept, receive, server


class _TLSLayer(Protocol):
    """Stands in for the TLS layer a transport writes through once TLS is on."""

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


class DirectWriteTests(SynchronousTestCase):
    def setUp(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.peer, sock, addr = accept(self, listener)
        self.reactor = MemoryReactor()
        self.protocol = _TLSLayer()
        self.transport = server(self, sock, addr, self.protocol, self.reactor)
        self.write = directwrite.writer(self.transport)

    def received(self, expected):
        return receive(self.peer, expected)

    def test_idle_socket_gets_bytes_at_once(self):
        self.write(b"hello\r\n")
        self.assertEqual(self.transport._tempDataLen, 0)
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.received(7), b"hello\r\n")

    def test_queued_bytes_are_never_overtaken(self):
        self.transport.write(b"first ")  # queued by Twisted, not sent yet
        self.write(b"second")
        self.assertEqual(self.transport._tempDataBuffer, [b"first ", b"second"])
        self.transport.doWrite()
        self.assertEqual(self.received(12), b"first second")

    def test_what_the_kernel_does_not_take_is_queued(self):
        big = bytes(range(256)) * 40000  # ~10 MB: more than the socket takes
        self.write(big)
        queued = self.transport._tempDataLen
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(big))
        self.assertIn(self.transport, self.reactor.getWriters())
        self.write(b"tail")  # behind the queued rest
        self.assertEqual(self.transport._tempDataBuffer[-1], b"tail")
        got = b""
        self.peer.settimeout(5)
        while len(got) < len(big) + 4:
            if self.transport._tempDataLen or self.transport.dataBuffer:
                self.transport.doWrite()
            try:
                got += self.peer.recv(1 << 20)
            except socket.timeout:
                break
        self.assertEqual(got, big + b"tail")

    def test_closing_transport_uses_its_own_path(self):
        self.transport.disconnecting = True
        self.write(b"late")
        self.assertEqual(self.transport._tempDataBuffer, [b"late"])

    def test_tls_and_other_transports_are_left_alone(self):
        self.transport.TLS = True
        self.write(b"secret")
        self.assertEqual(self.protocol.written, [b"secret"])
        other = StringTransport()
        self.assertIsNone(directwrite.writer(other))

    def test_a_client_connection_is_plain_tcp_too(self):
        # (the cluster's Redis publisher connects out)
        from twisted.internet.testing import MemoryReactorClock

        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = tcp.Client("127.0.0.1", listener.getsockname()[1], None, None,
                            MemoryReactorClock())
        self.addCleanup(client.socket.close)
        self.assertIsNotNone(directwrite.writer(client))

    def test_a_bounded_output_holds_while_paused_and_drops_once_closed(self):
        from twisted_chat.delivery.outlet import BoundedOutput

        overflowed = []
        output = BoundedOutput(self.transport, 100, lambda: overflowed.append(True))
        self.assertTrue(verifyObject(IPushProducer, output))
        self.assertIsNot(output.write, BoundedOutput.write)  # the direct writer
        output.write(b"now\r\n")
        self.assertEqual(self.received(5), b"now\r\n")
        output.pauseProducing()
        output.write(b"held")
        self.assertEqual(list(output.backlog), [b"held"])
        self.assertEqual(self.transport._tempDataLen, 0)  # nothing went past the pause
        output.write(b"x" * 200)  # over the limit: the client is cut off
        self.assertEqual(overflowed, [True])
        self.assertTrue(output.closed)
        output.write(b"gone")
        self.assertEqual(list(output.backlog), [])
        self.assertEqual(self.transport._tempDataLen, 0)


class _Connections:
    """``n`` real loopback connections: server-side tcp.Server transports with
    a BoundedOutput each (MemoryReactor: no reactor runs), and the peers."""

    def __init__(self, case, n):
        from twisted_chat.delivery.outlet import BoundedOutput

        listener = socket.create_server(("127.0.0.1", 0), backlog=n)
        case.addCleanup(listener.close)
        self.reactor = MemoryReactor()
        self.peers, self.transports, self.outputs = [], [], []
        for _ in range(n):
            peer, sock, addr = accept(case, listener)
            transport = server(case, sock, addr, _TLSLayer(), self.reactor)
            self.peers.append(peer)
            self.transports.append(transport)
            self.outputs.append(BoundedOutput(transport, 1 << 20, lambda: None))


class SendAllTests(SynchronousTestCase):
    """directwrite.idle and directwrite.send_all, over real sockets."""

    def test_idle_is_the_direct_writers_condition(self):
        from twisted_chat.delivery.outlet import BoundedOutput

        c = _Connections(self, 5)
        self.assertEqual([directwrite.idle(o) for o in c.outputs], [True] * 5)
        paused, queued, closing, closed, fine = c.outputs
        paused.pauseProducing()
        c.transports[1].write(b"queued")
        c.transports[2].disconnecting = True
        closed.abandon()
        self.assertEqual([directwrite.idle(o) for o in c.outputs],
                         [False, False, False, False, True])
        paused.resumeProducing()
        self.assertTrue(directwrite.idle(paused))
        self.assertFalse(directwrite.idle(BoundedOutput(StringTransport(), 100, lambda: None)))

    def test_each_socket_gets_the_bytes_and_a_failure_is_reported_as_0(self):
        import struct

        c = _Connections(self, 3)
        # The middle peer resets its connection: sending to it fails.
        c.peers[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.peers[1].close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                c.transports[1].socket.recv(1)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break  # the reset has arrived
        socks = [t.socket for t in c.transports]
        self.assertEqual(directwrite.send_all(socks, b"data"), [4, 0, 4])
        self.assertEqual(receive(c.peers[0], 4), b"data")
        self.assertEqual(receive(c.peers[2], 4), b"data")

    def test_a_partial_take_is_reported(self):
        c = _Connections(self, 2)
        big = bytes(range(256)) * 40000  # ~10 MB: more than a socket takes
        sent = directwrite.send_all([t.socket for t in c.transports], big)
        for k in sent:
            self.assertGreater(k, 0)
            self.assertLess(k, len(big))
