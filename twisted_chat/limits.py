"""Limits that keep one client from hurting the others: flood control, bounded
output per connection, connection counts, and the process's descriptor limit.

Nothing here knows about rooms or the line protocol; ``ChatProtocol`` and
``ChatFactory`` (protocol.py) wire these pieces to each connection.
"""

import collections
import resource

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from . import directwrite

log = Logger()

# Defaults, chosen for a LAN server that nobody tunes (docs/operations.rst).
DEFAULT_RATE = 5.0  # lines per second, sustained
DEFAULT_BURST = 20  # lines at once (a pasted paragraph, a client's start-up)
DEFAULT_MAX_BACKLOG = 256 * 1024  # bytes queued for one paused connection
DEFAULT_MAX_CLIENTS = 10000
DEFAULT_MAX_PER_IP = 100
DEFAULT_LISTEN_BACKLOG = 10000
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# Once a connection is asked to close, how long its peer gets to read what is
# left before the connection is aborted (a peer that never reads would
# otherwise hold its buffers forever).
CLOSE_TIMEOUT = 10.0
# Descriptors the server needs besides one per client (listeners, logs,
# history database, slack for connections being refused).
FD_HEADROOM = 256


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; O(1) per take.

    ``clock`` is an ``IReactorTime`` (its ``seconds()`` is the time source),
    so tests drive it with ``twisted.internet.task.Clock``. A rate of 0 (or
    less) disables the limit.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "_seconds")

    def __init__(self, rate: float, burst: int, clock):
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self._seconds = clock.seconds
        self.stamp = self._seconds()

    def take(self) -> bool:
        """Spend one token if there is one; False means over the limit."""
        if self.rate <= 0:
            return True
        now = self._seconds()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


def _nothing():
    pass


@implementer(IPushProducer)
class BoundedOutput:
    """The one way bytes leave for a connection: straight to the transport
    while it keeps up, into a bounded backlog while it is paused.

    Registered as a streaming producer on the transport: the transport calls
    ``pauseProducing`` when its own buffer (64 KiB in Twisted) is full and
    ``resumeProducing`` once it has drained. While paused, writes queue here;
    when the queue holds more than ``limit`` bytes it is dropped and
    ``overflow()`` is called once: that client is too slow to keep.

    Cost per write is O(1) (an append), and memory per connection is bounded
    by the transport's buffer plus ``limit`` plus one write.
    """

    socket = None  # set when the transport is plain TCP (see directwrite)

    def __init__(self, transport, limit: int, overflow, changed=None):
        self.transport = transport
        self.limit = limit
        self.overflow = overflow
        # Called whenever whether bytes could go straight to the socket may
        # have changed (paused, resumed, closed, a direct write done or
        # refused): the protocol keeps its member's express handle by it.
        self.changed = changed or _nothing
        self.paused = False
        self.closed = False
        self.backlog = collections.deque()
        self.backlog_bytes = 0
        # Straight into an idle plain-TCP socket (see twisted_chat.directwrite):
        # there ``write`` is that writer, which calls ``hold`` while paused.
        direct = directwrite.writer(transport, self)
        if direct is not None:
            self.write = direct
            # The handle of a member's express share (see ChatProtocol).
            self.socket = transport.socket
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        if self.paused or self.closed:
            self.hold(data)
        else:
            self.transport.write(data)

    def hold(self, data: bytes) -> None:
        """While paused: queue ``data`` (within the limit); once closed: drop it."""
        if self.closed:
            return
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > self.limit:
            self.abandon()
            self.overflow()

    def close(self) -> None:
        """No more output: hand what is queued to the transport, then stop
        being its producer so that ``loseConnection`` can complete."""
        if self.closed:
            return
        self.closed = True
        if self.backlog:
            data = b"".join(self.backlog)
            self._drop()
            self.transport.write(data)
        self.transport.unregisterProducer()
        self.changed()

    def abandon(self) -> None:
        """Drop the backlog unwritten and let go of the transport."""
        if not self.closed:
            self.closed = True
            self._drop()
            self.transport.unregisterProducer()
            self.changed()

    def _drop(self):
        self.backlog.clear()
        self.backlog_bytes = 0

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self):
        self.paused = True
        self.changed()

    def resumeProducing(self):
        self.paused = False
        backlog, write = self.backlog, self.transport.write
        # Hand over one queued chunk at a time: the transport pauses us again
        # as soon as its buffer is full, so the queue, not the transport,
        # keeps the excess and the bound holds.
        while backlog and not self.paused and not self.closed:
            data = backlog.popleft()
            self.backlog_bytes -= len(data)
            write(data)
        self.changed()

    def stopProducing(self):
        self.closed = True
        self._drop()
        self.changed()


class ConnectionLimits:
    """Counts live connections, in total and per peer address.

    ``admit(host)`` returns None and counts the connection, or the error code
    that refuses it; ``release(host)`` undoes a successful admit. A limit of 0
    means unlimited; a host of None (a UNIX socket peer) has no per-address
    limit.
    """

    def __init__(self, max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_per_ip: int = DEFAULT_MAX_PER_IP):
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_host = {}

    def admit(self, host):
        if self.max_clients and self.total >= self.max_clients:
            return "server-full"
        count = self.per_host.get(host, 0) if host is not None else 0
        if host is not None and self.max_per_ip and count >= self.max_per_ip:
            return "too-many-connections"
        self.total += 1
        if host is not None:
            self.per_host[host] = count + 1
        return None

    def release(self, host):
        self.total -= 1
        if host is not None:
            count = self.per_host.get(host, 0) - 1
            if count > 0:
                self.per_host[host] = count
            else:
                self.per_host.pop(host, None)


def raise_fd_limit(wanted: int):
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (never above the
    hard limit, never lower than it is). Returns the soft limit in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:
            log.warn("could not raise the open-file limit to {target}: {e}",
                     target=target, e=e)
    return soft
