"""Real loopback TCP connections under Twisted's own ``tcp.Server`` transport,
with no reactor running (a MemoryReactor stands in): what the kernel takes,
what the peer receives and what the transport keeps queued are all real and
observable, and the test stays synchronous (both runners).

:func:`accept` makes the socket pair, :func:`server` puts the server side
under a transport; each registers its own cleanups with the test case.
"""

import socket

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure


class Port:
    """The little of a listening port that ``tcp.Server`` asks of it."""

    _realPortNumber = 0

    def _buildAddr(self, addr):
        return IPv4Address("TCP", *addr)


def accept(case, listener):
    """Connect to ``listener`` and accept: the client's (blocking) socket, the
    server side's socket (non-blocking, as a reactor's) and the client's
    address. ``case``'s cleanups close both sockets."""
    peer = socket.create_connection(listener.getsockname())
    case.addCleanup(peer.close)
    sock, addr = listener.accept()
    sock.setblocking(False)
    case.addCleanup(sock.close)
    return peer, sock, addr


def server(case, sock, addr, protocol, reactor):
    """A ``tcp.Server`` transport for ``protocol`` over the accepted ``sock``
    (``protocol.makeConnection`` is the caller's); ``case``'s cleanups lose
    the connection (before the sockets close)."""
    transport = tcp.Server(sock, protocol, addr, Port(), 1, reactor)
    case.addCleanup(transport.connectionLost, Failure(ConnectionDone()))
    return transport


def receive(peer, count, timeout=5):
    """Read from ``peer`` until ``count`` bytes have come, the connection
    ends or ``timeout`` s pass between reads (socket.timeout); what came."""
    peer.settimeout(timeout)
    data = b""
    while len(data) < count:
        chunk = peer.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data
