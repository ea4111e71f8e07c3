"""Write to an idle plain-TCP socket at once, instead of on the next reactor turn.

``transport.write`` on an idle Twisted TCP transport buffers the bytes, asks
the reactor to watch the socket for writability (an ``epoll_ctl``), wakes up
on the next turn to ``send`` them, then stops watching (another
``epoll_ctl``). A fan-out server makes that round trip for every member on
every turn; with 10,000 members it is most of the cost per socket. Like Redis
writing its replies before it goes back to its event loop, :func:`writer`
sends straight away when that is safe and falls back to the transport
otherwise:

- only for a plain TCP transport (``twisted.internet.tcp.Server``), never a
  TLS one or a wrapper (their bytes must go through their own layer);
- only while the transport holds no data of its own (so bytes never pass
  ones queued earlier) and is connected and not closing;
- whatever the kernel does not take at once (a full socket buffer), and any
  error, goes to ``transport.write``: Twisted queues it, watches the socket,
  pauses producers and reports the error on its own path, as usual.

:func:`send_all` sends one room share to many such sockets in one C loop
(``map``); its caller (``Outlet.push_express``) keeps, per member, a
handle that is set only while :func:`idle` holds, and completes whatever a
socket did not take through the transport.
"""

import itertools
import socket
from operator import attrgetter

from twisted.internet import tcp

# When a TCP transport may be written around, read in one C call: it is
# connected, not closing, and holds no data of its own.
_TRANSPORT_STATE = attrgetter("_tempDataLen", "dataBuffer", "disconnecting", "connected",
                              "_writeDisconnected", "TLS")
_TRANSPORT_IDLE = (0, b"", False, True, False, False)


def writer(transport, output=None):
    """A ``write(data)`` for ``transport``, direct when idle; None if the
    transport is not plain TCP (then use ``transport.write``). A client's
    connection as well as a server's (the cluster's Redis publisher).

    With ``output`` (a :class:`~twisted_chat.delivery.outlet.BoundedOutput`), the
    result is that output's whole ``write``: while it is paused or closed,
    data goes to ``output.hold(data)`` instead. One call per member per turn
    instead of two: at 10,000 members the Python around each ``send`` is a
    fifth of the fan-out's time.
    """
    transport = under(transport)
    if type(transport) not in (tcp.Server, tcp.Client):
        return None
    send = transport.socket.send

    def write(data):
        t = transport
        if _TRANSPORT_STATE(t) != _TRANSPORT_IDLE:
            t.write(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            t.write(data)  # let the transport meet the error its own way
            return
        if sent < len(data):
            t.write(data[sent:] if sent else data)

    if output is None:
        return write

    def direct(data):
        if output.paused or output.closed:
            output.hold(data)
        else:
            write(data)
        output.changed()

    return direct


def under(transport):
    """What to write to for ``transport``: the TCP transport under a
    PROXY-header wrapper (:mod:`twisted_chat.proxyheader`), whose writes
    and producer calls pass straight through to it; else ``transport``."""
    # the class, not the object: wrappers forward unknown attributes to what they wrap
    return transport.transport if getattr(type(transport), "writes_through", False) else transport


_send = socket.socket.send


def idle(output) -> bool:
    """Whether bytes for ``output`` (a BoundedOutput) may go straight to its
    socket now: plain TCP, not paused or closed, nothing queued."""
    return (output.socket is not None and not output.paused and not output.closed
            and _TRANSPORT_STATE(output.transport) == _TRANSPORT_IDLE)


def send_all(socks, data: bytes):
    """``sock.send(data)`` on each of ``socks``, in one C loop: the bytes each
    took, in order (0 where ``send`` raised)."""
    sent = []
    it = map(_send, socks, itertools.repeat(data))
    while True:
        try:
            sent.extend(it)  # keeps what it had appended when a send raises
            return sent
        except OSError:
            sent.append(0)
