"""One connection's output, whatever its face: coalesced per turn, bounded, express.

An :class:`Outlet` is what a face hands the hub as a member's ``deliver`` and
``sink``. Events are rendered in the outlet's *mode* (a rendering registered
in :mod:`.render`, framing included: a text line, a JSON line, a WebSocket
frame, IRC lines...; the ``bye`` event too, so a face's last words are its
rendering's), queued, and leave once per reactor turn in one
write, when the :class:`~twisted_chat.delivery.turn.Turn` flushes. Bytes go
through a :class:`BoundedOutput` (a streaming producer with a bounded
backlog): a client that stops reading is cut off instead of growing the
server's memory. While the output is idle plain TCP and nothing waits, the
member carries the socket as its *express* handle and the room fan-out sends
its share straight to it, in bulk with every other such member's
(:meth:`Outlet.push_express`).

The face keeps its framing of input, its parsing and its rules; it tells the
outlet when to close, and the outlet tells the face (``face.outlet_overflowed()``,
``face.outlet_shutdown()``) when output decides the connection's end.
"""

import collections

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .. import fanout
from ..events import Event
from ..limits import CLOSE_TIMEOUT
from . import directwrite
from .render import rendering


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
    # A deque only while something is queued: an empty deque is 600 bytes,
    # 6 MB for 10,000 connections that almost never queue anything.
    backlog = ()

    def __init__(self, transport, limit: int, overflow, changed=None):
        transport = directwrite.under(transport)
        self.transport = transport
        self.limit = limit
        self.overflow = overflow
        # Called whenever whether bytes could go straight to the socket may
        # have changed (paused, resumed, closed, a direct write done or
        # refused): the outlet keeps its member's express handle by it.
        self.changed = changed or _nothing
        self.paused = False
        self.closed = False
        self.backlog_bytes = 0
        # Straight into an idle plain-TCP socket (see .directwrite):
        # there ``write`` is that writer, which calls ``hold`` while paused.
        direct = directwrite.writer(transport, self)
        if direct is not None:
            self.write = direct
            # The handle of a member's express share (see Outlet).
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
        if not self.backlog:
            self.backlog = collections.deque()
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
        self.backlog = ()
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
        if not self.backlog:
            self.backlog = ()
        self.changed()

    def stopProducing(self):
        self.closed = True
        self._drop()
        self.changed()


class Outlet:
    """The output of one connection of any face.

    ``turn`` is the :class:`~twisted_chat.delivery.turn.Turn` that flushes it
    and counts it; ``transport`` takes the bytes; ``face`` is the connection
    that owns it (see the module's docstring); ``mode`` names the rendering its
    events are encoded in. :meth:`open` starts the bounded output once the
    turn has admitted the connection; ``member`` is the hub's member whose
    events it carries (its ``deliver`` is :meth:`deliver`, its ``sink`` this).
    """

    # One per connection: slots keep it small (10,000 connections).
    __slots__ = ("turn", "transport", "face", "mode", "output", "member", "_out", "_abort")

    def __init__(self, turn, transport, face, mode):
        self.turn = turn
        self.transport = transport
        self.face = face
        self.mode = mode
        self.output = None  # the BoundedOutput, once open
        # The member whose express handle this outlet keeps: it stays set
        # after a shutdown (whose member stays in its room), so that closing
        # the output still clears the handle.
        self.member = None
        self._out = []  # encoded events waiting for this turn's flush
        self._abort = None  # forces a close the peer does not complete

    def open(self, limit: int) -> None:
        """Start output, with at most ``limit`` bytes of backlog (--max-backlog)."""
        self.output = BoundedOutput(self.transport, limit, self._overflowed,
                                    changed=self._express)

    def set_mode(self, mode: str) -> None:
        """Render this connection's events in ``mode`` (a registered rendering,
        see :mod:`.render`) from now on."""
        rendering(mode)  # ValueError if there is none
        self.mode = mode
        self._express()  # the express group is per mode

    # -- queueing ------------------------------------------------------------

    def deliver(self, event) -> None:
        """Queue ``event`` for this connection; it leaves at the end of the turn."""
        self.queue(event.encode(self.mode, self))

    def queue(self, data: bytes) -> None:
        """Queue bytes for this connection's next write: an event's rendering,
        or a reply the face rendered itself (one that is no hub event)."""
        member = self.member
        if member is not None:
            fanout.catch_up(member)  # room events owed so far go first
        out = self._out
        out.append(data)
        counts = self.turn.counts
        counts.deliveries += 1
        counts.bytes_out += len(data)
        if len(out) == 1:
            self.turn.dirty(self)
            if member is not None:
                member.express = None  # the room's share goes behind it

    def push(self, data: bytes) -> None:
        """A pre-encoded share of room events (the fan-out sink)."""
        if self._out:
            self._out.append(data)  # behind this turn's direct events
        else:
            self.output.write(data)

    def flush(self) -> None:
        """End of turn (the Turn calls it): this turn's events in one write."""
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self.output.write(data)

    # -- express: the room's share straight to the socket, in bulk ----------
    #
    # While this output is idle plain TCP and nothing of its own waits in
    # _out, its member carries the socket as ``express``: the room flush then
    # sends its share with everybody else's in one C loop (push_express)
    # instead of push -> output.write -> send per member. The handle is
    # cleared before anything makes that unsafe (an event queued in _out; the
    # output paused, closed, or left with queued bytes by a write) and set
    # again when a write through the normal path finds it safe.

    def _express(self) -> None:
        """Set or clear the member's express handle from the current state."""
        member = self.member
        if member is None:
            return
        output = self.output
        if not self._out and output is not None and directwrite.idle(output):
            member.express = output.socket
            member.express_via = _express_via(self.mode)
        else:
            member.express = None

    def transport_written(self) -> None:
        """Something other than this outlet wrote to its transport (a
        WebSocket's pings and close frame): what it left queued there must
        go before the room's next share, so the handle is checked again."""
        self._express()

    @staticmethod
    def push_express(members, socks, data: bytes) -> None:
        """The room share ``data`` to each member's socket, in one pass; what
        a socket does not take goes to its transport, as the direct writer's
        rest does."""
        sent = directwrite.send_all(socks, data)
        n = len(data)
        if sent.count(n) != len(sent):
            for member, k in zip(members, sent):
                if k != n:
                    member.express = None  # bytes queued now: not until drained
                    sink = member.sink
                    sink.output.transport.write(data[k:] if k else data)
                    sink._express()

    # -- input back-pressure (the Turn calls these) ---------------------------

    def pause_input(self) -> None:
        """Stop taking input: the face's ``pause_input()`` if it has one (a
        face that also stops handling what it has already read, so that the
        rest of a read does not become more messages), else the transport
        stops reading."""
        pause = getattr(self.face, "pause_input", None)
        if pause is not None:
            pause()
        else:
            self.transport.pauseProducing()

    def resume_input(self) -> None:
        resume = getattr(self.face, "resume_input", None)
        if resume is not None:
            resume()
        else:
            self.transport.resumeProducing()

    # -- the end ---------------------------------------------------------------

    def refuse(self, event) -> None:
        """Not admitted: ``event`` alone, written at once, then close."""
        self.transport.write(event.encode(self.mode, self))
        self.lose(CLOSE_TIMEOUT)

    def close(self, bye: str) -> None:
        """Say ``bye`` after what is queued, and close (the face has left the hub)."""
        self.deliver(Event("bye", {"reason": bye}))
        self.flush()
        self.lose(CLOSE_TIMEOUT)

    def shutdown(self, reason: str) -> None:
        """Server shutdown: the face stops (without telling the hub: every
        member leaves at once, and nobody is left to see the parts), then
        ``bye`` and close. The Turn owns the deadline."""
        output = self.output
        if output is None or output.closed:
            return  # closing already
        self.face.outlet_shutdown()
        self.deliver(Event("bye", {"reason": reason}))
        self.flush()
        self.lose(None)

    def _overflowed(self) -> None:
        """The backlog is over its limit: this client does not read."""
        self.turn.counts.slow_consumers += 1
        self._out = []
        self.face.outlet_overflowed()  # the face leaves the hub
        # The backlog is gone (BoundedOutput dropped it); the bye goes behind
        # whatever the transport still holds, and arrives if the peer ever
        # reads before the abort.
        self.transport.write(Event("bye", {"reason": "too slow: output backlog full"})
                             .encode(self.mode, self))
        self.lose(CLOSE_TIMEOUT)

    def lose(self, timeout) -> None:
        """Close once the transport has flushed; abort if that takes ``timeout``
        seconds (None: no deadline of its own)."""
        if self.output is not None:
            self.output.close()
        self.transport.loseConnection()
        if self._abort is None and timeout is not None:
            self._abort = self.turn.clock.callLater(timeout, self.abort)

    def abort(self) -> None:
        """Cut the connection now (a peer that does not read its last bytes)."""
        self._abort = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def stop(self) -> None:
        """The transport is gone: no more output."""
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        if self.output is not None:
            self.output.stopProducing()

    def release(self) -> None:
        """Forget what is queued and leave the Turn's registry (after ``stop``
        and once the face has left the hub)."""
        self._out = []
        self.turn.release(self)


# A member's express_via: the flush groups members by it and calls its
# function with each group (see twisted_chat.fanout). One tuple per mode.
_EXPRESS = {}


def _express_via(mode):
    via = _EXPRESS.get(mode)
    if via is None:
        via = _EXPRESS[mode] = (Outlet.push_express, mode)
    return via
