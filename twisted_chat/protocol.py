"""The line face of the chat: a LineReceiver per connection and its factory.

``ChatProtocol`` splits and bounds lines, decodes and cleans them, rate-limits
them, parses commands and calls the :class:`~twisted_chat.hub.Hub`. Events
coming back leave through the connection's
:class:`~twisted_chat.delivery.outlet.Outlet` in its mode (text or JSON
lines): coalesced into one write per reactor turn, with a bounded backlog.
The per-turn flush, the connection limits, back-pressure and shutdown are the
shared :class:`~twisted_chat.delivery.turn.Turn`'s.
"""

import socket

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from . import events, limits
from .commands import HELP, parse, strip_controls
from .delivery.outlet import Outlet
from .delivery.turn import SHUTDOWN_REASON, Turn
from .errors import ChatError
from .events import JSON, TEXT, Event
from .hub import Hub

DEFAULT_MAX_LINE = 4096
REGISTRATION_GRACE = 3.0
# TCP keepalive on accepted sockets: a peer that vanished (power cut, cable
# pulled) is noticed after about KEEPIDLE + KEEPINTVL * KEEPCNT seconds.
KEEPIDLE, KEEPINTVL, KEEPCNT = 60, 15, 4


class ChatProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger()
    outlet = None  # its Outlet, from connectionMade on
    initial_mode = TEXT  # a face that speaks JSON from the start says so (web.session)
    outlet_class = Outlet  # a face whose output differs says how (web.session)

    def __init__(self):
        self.member = None
        self._discarding = False  # inside the tail of an over-long line
        self._overflow = None  # bytes after an over-long line's newline
        self._grace = None
        self._limited = False  # dropping lines for --rate (one error per stretch)
        self._login_pending = False
        # LineReceiver's own two, which it first sets in dataReceived: set
        # here with the rest, every connection's attributes stay in the
        # compact layout CPython shares between instances of a class, instead
        # of a dict of their own (tracemalloc: 830 bytes a connection less).
        self._buffer = b""
        self._busyReceiving = False

    @property
    def mode(self):
        """The rendering of its events: TEXT (until /mode json) or JSON."""
        return TEXT if self.outlet is None else self.outlet.mode

    @mode.setter
    def mode(self, mode):
        self.outlet.set_mode(mode)

    @property
    def output(self):
        """Its outlet's BoundedOutput (None until admitted)."""
        return None if self.outlet is None else self.outlet.output

    # -- connection life -----------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        self.MAX_LENGTH = factory.max_line + 1  # room for the CR of a CRLF
        self.peer, self.host = _peer(self.transport)
        outlet = self.outlet = self.outlet_class(factory.turn, self.transport, self,
                                                 self.initial_mode)
        refused = factory.turn.admit(outlet, self.host)
        if refused is not None:
            self._refuse(refused)
            return
        _tune_socket(self.transport)
        outlet.open(factory.max_backlog)
        self.bucket = limits.TokenBucket(factory.rate, factory.burst, factory.clock)
        self.member = outlet.member = factory.hub.connect(outlet.deliver, sink=outlet,
                                                           host=self.host)
        self.log.info("connect {peer} as {nick}", peer=self.peer, nick=self.member.nick)
        self.deliver(factory.hub.welcome(self.member))
        if not factory.hub.guests:
            self.deliver(events.info("this server has no guests: /login NAME PASSWORD"))
        self._grace = factory.clock.callLater(factory.grace, self._register)
        if factory.idle_timeout:
            self.setTimeout(factory.idle_timeout)

    def connectionLost(self, reason):
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self.setTimeout(None)
        outlet = self.outlet
        if outlet is not None:
            outlet.stop()
        self._leave_hub("disconnected", reason.getErrorMessage())
        if outlet is not None:
            outlet.release()

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
        self.outlet.refuse(events.error(code, message))

    def outlet_overflowed(self):
        """The backlog is over --max-backlog: this client does not read. The
        outlet says bye and closes once it has left the hub."""
        self.log.warn("slow consumer {peer} {nick}: over {limit} bytes of output queued;"
                      " disconnecting", peer=self.peer,
                      nick=self.member.nick if self.member else "?",
                      limit=self.factory.max_backlog)
        self._leave_hub("disconnected", "slow consumer")

    def outlet_shutdown(self):
        """Server shutdown: input is moot from now on; the hub is not told."""
        self.member = None

    def timeoutConnection(self):
        """--idle-timeout: nothing received for that long."""
        self.close("disconnected", bye="idle timeout",
                   why=f"idle for {self.factory.idle_timeout:g} s")

    def callLater(self, period, func):  # TimeoutMixin's clock: the factory's
        return self.factory.clock.callLater(period, func)

    def shutdown(self, reason=SHUTDOWN_REASON):
        """Say ``bye`` and close, without telling the hub: at server shutdown
        every member leaves at once, and nobody is left to see the parts."""
        if self.member is not None:
            self.outlet.shutdown(reason)

    def _register(self):
        if self.member is not None:
            self.factory.hub.register(self.member)

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data):
        """Bytes from the peer; ``b""`` (from ``resumeProducing``) handles the
        lines left unhandled while input was paused."""
        if self.member is None:
            return  # closing (or refused): input is moot
        if data and self.timeOut is not None:
            self.resetTimeout()
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1:]
        while True:
            super().dataReceived(data)
            data, self._overflow = self._overflow, None
            if not data:
                break

    def pause_input(self):
        """History back-pressure (the Turn, through the outlet): stop reading,
        and stop handling lines at once, even in the middle of a read. The
        rest of what was read waits raw in the line buffer (at most one read)
        instead of becoming more messages for the store to hold."""
        self.pauseProducing()  # LineReceiver's: both

    def resume_input(self):
        if self.paused and not self._claiming:
            self.resumeProducing()  # handles the buffered lines, then reads

    _claiming = False  # a /nick waits for its claim across the cluster

    def _nick(self, name):
        """``/nick``. In a cluster the rename waits for the nick's claim in
        Redis: the lines after it wait too, so that a ``/join`` sent with
        the ``/nick`` joins under the new nick, as on a single server, and
        not as the guest renamed a moment later."""
        hub = self.factory.hub
        if hub.cluster is None:
            hub.set_nick(self.member, name)
            return
        waiting = []

        def answered(ok):
            if not ok:
                self._reply_error("nick-taken", f"the nick {name} is taken")
            if waiting:
                self._claiming = False
                if not self.factory.turn.input_paused:
                    self.resume_input()
            else:
                waiting.append(False)  # answered at once: nothing to wait for

        hub.set_nick(self.member, name, answered)
        if not waiting:
            waiting.append(True)
            self._claiming = True
            self.pause_input()

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
        self.factory.hub.counts.rate_limited += 1
        if not self._limited:
            self._limited = True
            f = self.factory
            self._reply_error("rate-limited", f"slow down: at most {f.rate:g} lines a second"
                              f" (bursts of {f.burst}); lines are dropped until you do")
        return False

    def _dispatch(self, command):
        hub, member, name = self.factory.hub, self.member, command.name
        if name not in _LOCAL:
            # On a server without guests, a connection that has not logged in
            # may only shape its own session until it does.
            hub.check_guest(member)
        handler = _HUB_COMMANDS.get(name)
        if handler is not None:
            handler(hub, member, command)
        elif name == "nick":
            self._nick(command.arg)
        elif name == "mode":
            self.mode = command.arg
            member.echo = self.mode == JSON
            if self.mode == JSON:
                self.deliver(hub.welcome(member))
            else:
                self.deliver(events.info("mode text"))
        elif name == "ping":
            # In order: a pong follows the echoes of messages sent before it
            # and any history replay asked for before it, in every room.
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
            self.factory.hub.counts.login_failures += 1
            failure.trap(ChatError)
            if self.member is not None:
                self._reply_error(failure.value.code, failure.value.message)

        d.addCallbacks(succeeded, failed).addErrback(
            lambda f: self.log.failure("login of {peer} went wrong", f, peer=self.peer))

    # -- output --------------------------------------------------------------

    def deliver(self, event):
        """Queue ``event`` for this connection; it leaves at the end of the turn."""
        self.outlet.deliver(event)

    def close(self, part_reason, bye, why=None):
        """Leave the hub with ``part_reason``, say ``bye`` and close after the flush."""
        if self.member is None:
            return
        self._leave_hub(part_reason, why or part_reason)
        self.outlet.close(bye)

    def _reply_error(self, code, message):
        hint = _HINTS.get(code)
        if hint is not None:
            message = hint(message)
        self._reply(events.error(code, message))

    def _reply(self, event):
        """An answer to this connection, in its stream's order: behind the
        events of what it did before (a part, a replay still being read)."""
        if self.member is not None:
            self.factory.hub.send(self.member, event)
        else:
            self.deliver(event)


# The core's refusals say what is wrong in no face's words; this face adds
# which of its commands helps.
_HINTS = {
    "login-required": lambda m: m.replace("log in first", "/login NAME PASSWORD first"),
    "nick-reserved": lambda m: m.replace("logs in to use it", "uses /login"),
    "too-many-rooms": lambda m: m.replace("leave one first", "/part one first"),
    "invite-only": lambda m: m.replace("can invite you", "can /invite you"),
    "bad-key": lambda m: m + ": /join ROOM KEY",
    "no-such-ban": lambda m: m + "; /ban ROOM lists them",
    "not-in-room": lambda m: m.replace("join one first", "/join ROOM first"),
}

# Commands that shape only the connection's own session: allowed before a
# login on a server without guests.
_LOCAL = frozenset({"login", "help", "quit", "mode", "ping"})

# The commands that are one hub call: name -> f(hub, member, command).
_HUB_COMMANDS = {
    "say": lambda hub, m, c: hub.say(m, c.text, room=c.room),
    "me": lambda hub, m, c: hub.say(m, c.text, action=True),
    "describe": lambda hub, m, c: hub.say(m, c.text, room=c.room, action=True),
    "join": lambda hub, m, c: hub.join(m, c.arg, c.text),
    "part": lambda hub, m, c: hub.part(m, c.room, c.text),
    "msg": lambda hub, m, c: hub.private(m, c.arg, c.text),
    "who": lambda hub, m, c: hub.who(m, c.arg),
    "history": lambda hub, m, c: hub.history_page(m, c.room, c.count, c.before),
    "rooms": lambda hub, m, c: hub.list_rooms(m),
    "topic": lambda hub, m, c: hub.topic(m, c.room, c.text),
    "op": lambda hub, m, c: hub.op(m, c.room, c.arg),
    "deop": lambda hub, m, c: hub.deop(m, c.room, c.arg),
    "voice": lambda hub, m, c: hub.voice(m, c.room, c.arg),
    "devoice": lambda hub, m, c: hub.devoice(m, c.room, c.arg),
    "kick": lambda hub, m, c: hub.kick(m, c.room, c.arg, c.text),
    "ban": lambda hub, m, c: hub.ban(m, c.room, c.arg),
    "unban": lambda hub, m, c: hub.unban(m, c.room, c.arg),
    "invite": lambda hub, m, c: hub.invite(m, c.arg, c.room),
    "set": lambda hub, m, c: (hub.flags(m, c.room) if c.arg is None
                              else hub.set_flag(m, c.room, c.arg, c.value)),
}


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
    """Builds a ChatProtocol per connection; the line face's settings.

    Its connections register with ``turn`` (the server's one
    :class:`~twisted_chat.delivery.turn.Turn`, shared by every face). Without
    one, the factory makes its own for ``hub`` with ``max_clients`` and
    ``max_per_ip`` (a server of one face, and the tests).
    """

    protocol = ChatProtocol

    def __init__(self, hub: Hub, clock: IReactorTime = None, max_line: int = DEFAULT_MAX_LINE,
                 grace: float = REGISTRATION_GRACE,
                 max_backlog: int = limits.DEFAULT_MAX_BACKLOG,
                 rate: float = limits.DEFAULT_RATE, burst: int = limits.DEFAULT_BURST,
                 max_clients: int = None, max_per_ip: int = None,
                 idle_timeout: float = 0, accounts=None, turn: Turn = None):
        if turn is None:
            turn = Turn(hub, clock,
                        limits.DEFAULT_MAX_CLIENTS if max_clients is None else max_clients,
                        limits.DEFAULT_MAX_PER_IP if max_per_ip is None else max_per_ip)
        elif max_clients is not None or max_per_ip is not None:
            raise TypeError("the connection limits are the turn's: give them to Turn")
        self.hub = hub
        self.turn = turn
        self.clock = turn.clock if clock is None else clock
        self.max_line = max_line
        self.grace = grace
        self.max_backlog = max_backlog
        self.rate = rate
        self.burst = burst
        self.idle_timeout = idle_timeout
        self.accounts = accounts  # twisted_chat.auth.Accounts, or None without --auth
