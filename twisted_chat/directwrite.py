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

:func:`write_many` does the same for a whole room's fan-out in one pass: the
state checks and the ``send`` calls run in C (``operator.attrgetter``,
``map``) instead of a Python call per member.
"""

import itertools
import socket
from operator import attrgetter

from twisted.internet import tcp


def writer(transport, output=None):
    """A ``write(data)`` for ``transport``, direct when idle; None if the
    transport is not plain TCP (then use ``transport.write``).

    With ``output`` (a :class:`~twisted_chat.limits.BoundedOutput`), the
    result is that output's whole ``write``: while it is paused or closed,
    data goes to ``output.hold(data)`` instead. One call per member per turn
    instead of two: at 10,000 members the Python around each ``send`` is a
    fifth of the fan-out's time.
    """
    if type(transport) is not tcp.Server:
        return None
    send = transport.socket.send

    def direct(data):
        if output is not None and (output.paused or output.closed):
            output.hold(data)
            return
        t = transport
        if (t._tempDataLen or t.dataBuffer or t.disconnecting or not t.connected
                or t._writeDisconnected or t.TLS):
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

    return direct


# What write_many reads of each output: the direct writer's conditions, in
# its order. An output whose state equals _IDLE may be sent to at once.
# What write_many reads of each output: the direct writer's conditions. An
# output whose state equals _IDLE is neither paused nor closed, and its
# transport is connected, not closing, and holds no data of its own.
_STATE = attrgetter("paused", "closed", "transport._tempDataLen", "transport.dataBuffer",
                    "transport.disconnecting", "transport.connected",
                    "transport._writeDisconnected", "transport.TLS")
_IDLE = (False, False, 0, b"", False, True, False, False)
_SOCKET = attrgetter("socket")
_send = socket.socket.send


def write_many(outputs, data: bytes) -> None:
    """``output.write(data)`` for every one of ``outputs`` (BoundedOutputs).

    Outputs on an idle plain-TCP transport, neither paused nor closed, are
    sent to in one pass (:func:`send_all`), straight after their state is
    read; the others, and whatever the kernel does not take, go through the
    usual path afterwards.
    """
    socks = list(map(_SOCKET, outputs))
    others = []
    if None in socks:  # not plain TCP: their own write
        others = [o for o, s in zip(outputs, socks) if s is None]
        outputs = [o for o, s in zip(outputs, socks) if s is not None]
        socks = [s for s in socks if s is not None]
    states = list(map(_STATE, outputs))
    if states.count(_IDLE) != len(states):
        # Paused, closed, or data queued: the usual path, never overtaken.
        idle = [state == _IDLE for state in states]
        others += [o for o, i in zip(outputs, idle) if not i]
        outputs = list(itertools.compress(outputs, idle))
        socks = list(itertools.compress(socks, idle))
    n = len(data)
    sent = send_all(socks, data)
    if sent.count(n) != len(sent):
        for output, k in zip(outputs, sent):
            if k != n:
                # Full socket buffer, or an error: the transport queues the
                # rest, watches the socket, and meets any error its own way.
                output.transport.write(data[k:] if k else data)
    for output in others:
        output.write(data)


def send_all(socks, data: bytes):
    """Bytes sent to each socket (0 where ``send`` raised), in order."""
    sent = []
    it = map(_send, socks, itertools.repeat(data))
    while True:
        try:
            sent.extend(it)  # keeps what it had appended when a send raises
            return sent
        except OSError:
            sent.append(0)
