"""Limits that keep one client from hurting the others: their defaults, flood
control, and the process's descriptor limit.

Nothing here knows about rooms or a wire. The bounded output of a connection
is :class:`twisted_chat.delivery.outlet.BoundedOutput`; the connection counts
are the :class:`twisted_chat.delivery.turn.Turn`'s.
"""

import resource

from twisted.logger import Logger

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
