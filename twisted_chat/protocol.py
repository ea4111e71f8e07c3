"""The wire face of the chat: a LineReceiver per connection and the broadcasting factory.

``ChatProtocol`` splits and bounds lines, decodes and cleans them, rate-limits
them, parses commands and calls the :class:`~twisted_chat.hub.Hub`; events
coming back are rendered in the connection's mode. Output is coalesced:
everything a connection is sent during one reactor turn leaves in one write,
through a :class:`~twisted_chat.limits.BoundedOutput` (a streaming producer
with a bounded backlog), so a client that stops reading is cut off instead of
growing the server's memory.
"""

import socket

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from . import directwrite, events, fanout, limits
from .commands import HELP, parse, strip_controls
from .errors import ChatError
from .events import JSON, TEXT, Event
from .hub import Hub

DEFAULT_MAX_LINE = 4096
REGISTRATION_GRACE = 3.0
SHUTDOWN_REASON = "server shutting down"
# TCP keepalive on accepted sockets: a peer that vanished (power cut, cable
# pulled) is noticed after about KEEPIDLE + KEEPINTVL * KEEPCNT seconds.
KEEPIDLE, KEEPINTVL, KEEPCNT = 60, 15, 4


class ChatProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger()
    output = None  # the BoundedOutput, once the connection is admitted
    # The member whose express handle this connection keeps: unlike
    # ``member`` it stays set after a shutdown() (whose member stays in its
    # room), so that closing the output still clears the handle.
    _express_to = None

    def __init__(self):
        self.mode = TEXT
        self.member = None
        self._out = []  # encoded events waiting for this turn's flush
        self._discarding = False  # inside the tail of an over-long line
        self._overflow = None  # bytes after an over-long line's newline
        self._grace = None
        self._abort = None  # forces a close the peer does not complete
        self._limited = False  # dropping lines for --rate (one error per stretch)
        self._admitted = False
        self._login_pending = False

    # -- connection life -----------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        self.MAX_LENGTH = factory.max_line + 1  # room for the CR of a CRLF
        self.peer, self.host = _peer(self.transport)
        refused = factory.limits.admit(self.host)
        if refused is not None:
            self._refuse(refused)
            return
        self._admitted = True
        factory.connections.add(self)
        if factory.input_paused:
            self.transport.pauseProducing()
        _tune_socket(self.transport)
        self.output = limits.BoundedOutput(self.transport, factory.max_backlog, self._too_slow,
                                           changed=self._express)
        self.bucket = limits.TokenBucket(factory.rate, factory.burst, factory.clock)
        self.member = self._express_to = factory.hub.connect(self.deliver, sink=self)
        self.log.info("connect {peer} as {nick}", peer=self.peer, nick=self.member.nick)
        self.deliver(factory.hub.welcome(self.member))
        if not factory.hub.guests:
            self.deliver(events.info("this server has no guests: /login NAME PASSWORD"))
        self._grace = factory.clock.callLater(factory.grace, self._register)
        if factory.idle_timeout:
            self.setTimeout(factory.idle_timeout)

    def connectionLost(self, reason):
        factory = self.factory
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self.setTimeout(None)
        if self.output is not None:
            self.output.stopProducing()
        self._leave_hub("disconnected", reason.getErrorMessage())
        self._out = []
        if self._admitted:
            self._admitted = False
            factory.limits.release(self.host)
            factory.connection_closed(self)

    def _leave_hub(self, part_reason, why):
        if self.member is None:
            return
        self.factory.hub.disconnect(self.member, part_reason)
        self.log.info("disconnect {peer} {nick}: {why}", peer=self.peer,
                      nick=self.member.nick, why=why)
        self.member = None

    def _refuse(self, code):
        message = {
            "server-full": "the server is full; try again later",
            "too-many-connections": "too many connections from your address",
        }[code]
        self.log.info("refused {peer}: {code}", peer=self.peer, code=code)
        # Before /mode json a connection speaks text: refuse in text.
        self.transport.write(events.error(code, message).encode(TEXT))
        self._lose(limits.CLOSE_TIMEOUT)

    def _lose(self, timeout):
        """Close once the transport has flushed; abort if that takes ``timeout``."""
        if self.output is not None:
            self.output.close()
        self.transport.loseConnection()
        if self._abort is None and timeout is not None:
            self._abort = self.factory.clock.callLater(timeout, self._force_close)

    def _force_close(self):
        self._abort = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _too_slow(self):
        """The backlog is over --max-backlog: this client does not read."""
        factory = self.factory
        self.log.warn("slow consumer {peer} {nick}: over {limit} bytes of output queued;"
                      " disconnecting", peer=self.peer,
                      nick=self.member.nick if self.member else "?", limit=factory.max_backlog)
        self._out = []
        self._leave_hub("disconnected", "slow consumer")
        # The backlog is gone (BoundedOutput dropped it); the bye goes behind
        # whatever the transport still holds, and arrives if the peer ever
        # reads before the abort.
        self.transport.write(Event("bye", {"reason": "too slow: output backlog full"})
                             .encode(self.mode))
        self._lose(limits.CLOSE_TIMEOUT)

    def timeoutConnection(self):
        """--idle-timeout: nothing received for that long."""
        self.close("disconnected", bye="idle timeout",
                   why=f"idle for {self.factory.idle_timeout:g} s")

    def callLater(self, period, func):  # TimeoutMixin's clock: the factory's
        return self.factory.clock.callLater(period, func)

    def shutdown(self, reason=SHUTDOWN_REASON):
        """Say ``bye`` and close, without telling the hub: at server shutdown
        every member leaves at once, and nobody is left to see the parts."""
        if self.member is None:
            return
        self.member = None
        self.deliver(Event("bye", {"reason": reason}))
        self.flush()
        self._lose(None)  # the shutdown service owns the deadline

    def _register(self):
        if self.member is not None:
            self.factory.hub.register(self.member)

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data):
        if self.member is None:
            return  # closing (or refused): input is moot
        if self.timeOut is not None:
            self.resetTimeout()
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1:]
        while data:
            super().dataReceived(data)
            data, self._overflow = self._overflow, None

    def lineLengthExceeded(self, line):
        # LineReceiver hands us the long line plus everything buffered after
        # it. Drop the line up to its newline, keep what follows.
        if self._take():
            self._reply_error("line-too-long",
                              f"lines are limited to {self.factory.max_line} bytes")
        end = line.find(b"\n")
        if end < 0:
            self._discarding = True
        else:
            self._overflow = line[end + 1:]

    def lineReceived(self, line):
        if self.member is None:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return  # blank: ignored, and free
        # Every other line costs a token before any work or reply, bad ones
        # included: nothing a client sends can make the server answer faster
        # than --rate (or spend more than a split and a compare on it).
        if not _is_quit(line) and not self._take():
            return
        if len(line) > self.factory.max_line:
            self._reply_error("line-too-long", f"lines are limited to {self.factory.max_line} bytes")
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._reply_error("bad-encoding", "lines must be UTF-8; that line was dropped")
            return
        try:
            command = parse(strip_controls(text))
            if command is not None:
                self._dispatch(command)
        except ChatError as e:
            self._reply_error(e.code, e.message)
        except Exception:
            # A bug of ours: log it for the operator, tell the user plainly,
            # keep the connection (and everybody else's).
            self.log.failure("internal error handling a line from {peer}", peer=self.peer)
            self._reply_error("internal", "the server failed to handle that line")

    def _take(self):
        """Spend a token for a line; False drops it. The first line dropped in
        a row gets a rate-limited error, the rest of that stretch go silently
        (a flood must not turn into a flood of errors)."""
        if self.bucket.take():
            self._limited = False
            return True
        if not self._limited:
            self._limited = True
            f = self.factory
            self._reply_error("rate-limited", f"slow down: at most {f.rate:g} lines a second"
                              f" (bursts of {f.burst}); lines are dropped until you do")
        return False

    def _dispatch(self, command):
        hub, member, name = self.factory.hub, self.member, command.name
        hub.check_guest(member, name)
        if name == "say":
            hub.say(member, command.text)
        elif name == "me":
            hub.say(member, command.text, action=True)
        elif name == "nick":
            hub.set_nick(member, command.arg)
        elif name == "join":
            hub.join(member, command.arg)
        elif name == "msg":
            hub.private(member, command.arg, command.text)
        elif name == "who":
            hub.who(member, command.arg)
        elif name == "history":
            hub.history_page(member, command.count, command.before)
        elif name == "rooms":
            hub.list_rooms(member)
        elif name == "mode":
            self.mode = command.arg
            member.echo = self.mode == JSON
            if self.mode == JSON:
                self.deliver(hub.welcome(member))
            else:
                self.deliver(events.info("mode text"))
        elif name == "ping":
            # In order: a pong follows the echoes of messages sent before it
            # and any history replay asked for before it.
            hub.send(member, Event("pong", {"token": command.text}))
        elif name == "help":
            for line in HELP:
                self.deliver(events.info(line))
        elif name == "login":
            self._login(command.arg, command.text)
        elif name == "quit":
            reason = f"quit: {command.text}" if command.text else "quit"
            self.close(reason, bye="goodbye")

    def _login(self, name, password):
        accounts = self.factory.accounts
        if accounts is None:
            raise ChatError("login-failed", "this server has no accounts")
        if self._login_pending:
            raise ChatError("login-failed", "a login is already in progress")
        d = accounts.login(self.host or self.peer, name, password)
        self._login_pending = True

        def succeeded(nick):
            self._login_pending = False
            if self.member is not None:  # still connected
                self.log.info("login {peer} {old} as {nick}", peer=self.peer,
                              old=self.member.nick, nick=nick)
                self.factory.hub.login(self.member, nick)

        def failed(failure):
            self._login_pending = False
            failure.trap(ChatError)
            if self.member is not None:
                self._reply_error(failure.value.code, failure.value.message)

        d.addCallbacks(succeeded, failed).addErrback(
            lambda f: self.log.failure("login of {peer} went wrong", f, peer=self.peer))

    # -- output --------------------------------------------------------------

    def deliver(self, event):
        """Queue ``event`` for this connection; it leaves at the end of the turn."""
        member = self.member
        if member is not None and member.room is not None and member.room.batch is not None:
            fanout.catch_up(member)  # room events before this one go first
        out = self._out
        out.append(event.encode(self.mode))
        if len(out) == 1:
            self.factory.dirty(self)
            if self._express_to is not None:
                self._express_to.express = None  # the room's share goes behind it

    def push(self, data):
        """A pre-encoded share of room events (the fan-out sink)."""
        if self._out:
            self._out.append(data)  # behind this turn's direct events
        else:
            self.output.write(data)

    # -- express: the room's share straight to the socket, in bulk ----------
    #
    # While this connection's output is idle plain TCP and nothing of its own
    # waits in _out, its member carries the socket as ``express``: the room
    # flush then sends its share with everybody else's in one C loop
    # (push_express) instead of push -> output.write -> send per member. The
    # handle is cleared before anything makes that unsafe (an event queued in
    # _out; the output paused, closed, or left with queued bytes by a write)
    # and set again when a write through the normal path finds it safe.

    def _express(self):
        """Set or clear the member's express handle from the current state."""
        member = self._express_to
        if member is None:
            return
        output = self.output
        if not self._out and output is not None and directwrite.idle(output):
            member.express = output.socket
            member.express_via = _EXPRESS[self.mode]
        else:
            member.express = None

    @staticmethod
    def push_express(members, socks, data):
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

    def flush(self):
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self.output.write(data)

    def close(self, part_reason, bye, why=None):
        """Leave the hub with ``part_reason``, say ``bye`` and close after the flush."""
        if self.member is None:
            return
        self._leave_hub(part_reason, why or part_reason)
        self.deliver(Event("bye", {"reason": bye}))
        self.flush()
        self._lose(limits.CLOSE_TIMEOUT)

    def _reply_error(self, code, message):
        self.deliver(events.error(code, message))


def _is_quit(line: bytes) -> bool:
    """/quit is never rate-limited: leaving must always work."""
    return line[:5].lower() == b"/quit" and line[5:6] in (b"", b" ")


def _peer(transport):
    """(printable peer, host for per-address limits or None)."""
    addr = transport.getPeer()
    host = getattr(addr, "host", None)
    if host is None:
        return str(addr), None
    return f"{host}:{addr.port}", host


# A member's express_via: the flush groups members by it and calls its
# function with each group (see twisted_chat.fanout).
_EXPRESS = {mode: (ChatProtocol.push_express, mode) for mode in (TEXT, JSON)}


def _tune_socket(transport):
    """TCP keepalive (on Linux: probes after a minute, not two hours), and no
    Nagle: output is already coalesced into one write per turn, and Nagle
    with the peer's delayed ACKs would hold those writes back for up to
    40 ms (measured: p50 delivery latency 20 ms with it, 0.2 ms without)."""
    try:
        transport.setTcpNoDelay(True)
        transport.setTcpKeepAlive(True)
        sock = transport.getHandle()
        for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL),
                            ("TCP_KEEPCNT", KEEPCNT)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except (AttributeError, OSError, NotImplementedError):
        pass  # not TCP (UNIX socket, test transport): nothing to keep alive


class ChatFactory(Factory):
    """Builds a ChatProtocol per connection and flushes their output once per turn."""

    protocol = ChatProtocol
    log = Logger()

    def __init__(self, hub: Hub, clock: IReactorTime = None, max_line: int = DEFAULT_MAX_LINE,
                 grace: float = REGISTRATION_GRACE,
                 max_backlog: int = limits.DEFAULT_MAX_BACKLOG,
                 rate: float = limits.DEFAULT_RATE, burst: int = limits.DEFAULT_BURST,
                 max_clients: int = limits.DEFAULT_MAX_CLIENTS,
                 max_per_ip: int = limits.DEFAULT_MAX_PER_IP,
                 idle_timeout: float = 0, accounts=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.hub = hub
        self.clock = clock
        self.max_line = max_line
        self.grace = grace
        self.max_backlog = max_backlog
        self.rate = rate
        self.burst = burst
        self.idle_timeout = idle_timeout
        self.limits = limits.ConnectionLimits(max_clients, max_per_ip)
        self.accounts = accounts  # twisted_chat.auth.Accounts, or None without --auth
        self.connections = set()  # admitted connections still open
        self._dirty = []
        self._rooms = []  # rooms with a batch to flush this turn
        self._flush_call = None
        self._closed_all = None  # Deferred of a shutdown in progress
        self.input_paused = False  # see pause_input
        hub.schedule = self.dirty_room
        hub.call_later = clock.callLater  # presence batching's interval timer

    def dirty(self, proto):
        self._dirty.append(proto)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def dirty_room(self, room):
        self._rooms.append(room)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self):
        """Write out every connection's queued events: one write per connection."""
        self._flush_call = None
        # Rooms first: a member's share lands behind its direct events of
        # the turn (push appends to a pending _out) or goes out at once.
        rooms, self._rooms = self._rooms, []
        for room in rooms:
            fanout.flush(room)
        dirty, self._dirty = self._dirty, []
        for proto in dirty:
            proto.flush()

    def pause_input(self):
        """Stop reading from every connection: the history store is behind
        (it calls this through its ``on_pressure``) and catches up meanwhile."""
        self.input_paused = True
        for proto in self.connections:
            proto.transport.pauseProducing()

    def resume_input(self):
        self.input_paused = False
        for proto in list(self.connections):
            proto.transport.resumeProducing()

    def connection_closed(self, proto):
        self.connections.discard(proto)
        if self._closed_all is not None and not self.connections:
            d, self._closed_all = self._closed_all, None
            d.callback(None)

    def shutdown(self, timeout: float = limits.DEFAULT_SHUTDOWN_TIMEOUT,
                 reason: str = SHUTDOWN_REASON) -> defer.Deferred:
        """Say ``bye`` to every connection and close them all.

        The Deferred fires once every connection has closed, or after
        ``timeout`` seconds, when the stragglers (peers that do not read
        their last bytes) are aborted.
        """
        if not self.connections:
            return defer.succeed(None)
        self.log.info("shutting down: bye to {n} connections", n=len(self.connections))
        d = self._closed_all = defer.Deferred()
        for proto in list(self.connections):
            proto.shutdown(reason)

        def give_up():
            if self._closed_all is d:
                self.log.warn("shutdown: aborting {n} connections still open after {t:g} s",
                              n=len(self.connections), t=timeout)
                for proto in list(self.connections):
                    proto._force_close()
                self._closed_all = None
                d.callback(None)

        call = self.clock.callLater(timeout, give_up)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d


class ChatService(MultiService):
    """The server: its children are the listeners; stopping it closes them,
    then says ``bye`` to every client and waits (boundedly) for their
    connections to close before twistd lets the reactor stop."""

    def __init__(self, factory: ChatFactory,
                 shutdown_timeout: float = limits.DEFAULT_SHUTDOWN_TIMEOUT):
        super().__init__()
        self.factory = factory
        self.shutdown_timeout = shutdown_timeout

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)  # no new connections
        d.addCallback(lambda _: self.factory.shutdown(self.shutdown_timeout))
        return d
