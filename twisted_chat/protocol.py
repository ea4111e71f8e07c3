"""The wire face of the chat: a LineReceiver per connection and the broadcasting factory.

``ChatProtocol`` splits and bounds lines, decodes and cleans them, parses
commands and calls the :class:`~twisted_chat.hub.Hub`; events coming back are
rendered in the connection's mode. Output is coalesced: everything a
connection is sent during one reactor turn leaves in one ``transport.write``.
"""

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from . import events
from .commands import HELP, parse, strip_controls
from .errors import ChatError
from .events import JSON, TEXT, Event
from .hub import Hub

DEFAULT_MAX_LINE = 4096
REGISTRATION_GRACE = 3.0


class ChatProtocol(LineReceiver):
    delimiter = b"\n"
    log = Logger()

    def __init__(self):
        self.mode = TEXT
        self.member = None
        self._out = []  # encoded events waiting for this turn's flush
        self._discarding = False  # inside the tail of an over-long line
        self._overflow = None  # bytes after an over-long line's newline
        self._grace = None

    # -- connection life -----------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        self.MAX_LENGTH = factory.max_line + 1  # room for the CR of a CRLF
        self.peer = _peer(self.transport)
        self.member = factory.hub.connect(self.deliver)
        factory.connections.add(self)
        self.log.info("connect {peer} as {nick}", peer=self.peer, nick=self.member.nick)
        self.deliver(factory.hub.welcome(self.member))
        self._grace = factory.clock.callLater(factory.grace, self._register)

    def connectionLost(self, reason):
        factory = self.factory
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._leave_hub("disconnected", reason.getErrorMessage())
        self._out = []

    def _leave_hub(self, part_reason, why):
        if self.member is None:
            return
        self.factory.connections.discard(self)
        self.factory.hub.disconnect(self.member, part_reason)
        self.log.info("disconnect {peer} {nick}: {why}", peer=self.peer,
                      nick=self.member.nick, why=why)
        self.member = None

    def _register(self):
        if self.member is not None:
            self.factory.hub.register(self.member)

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data):
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
        self._reply_error("line-too-long", f"lines are limited to {self.factory.max_line} bytes")
        end = line.find(b"\n")
        if end < 0:
            self._discarding = True
        else:
            self._overflow = line[end + 1:]

    def lineReceived(self, line):
        if line.endswith(b"\r"):
            line = line[:-1]
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

    def _dispatch(self, command):
        hub, member, name = self.factory.hub, self.member, command.name
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
            self.deliver(Event("pong", {"token": command.text}))
        elif name == "help":
            for line in HELP:
                self.deliver(events.info(line))
        elif name == "quit":
            reason = f"quit: {command.text}" if command.text else "quit"
            self.close(reason, bye="goodbye")

    # -- output --------------------------------------------------------------

    def deliver(self, event):
        """Queue ``event`` for this connection; it leaves at the end of the turn."""
        out = self._out
        out.append(event.encode(self.mode))
        if len(out) == 1:
            self.factory.dirty(self)

    def flush(self):
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self.transport.write(data)

    def close(self, part_reason, bye):
        """Leave the hub with ``part_reason``, say ``bye`` and close after the flush."""
        if self.member is None:
            return
        self._leave_hub(part_reason, part_reason)
        self.deliver(Event("bye", {"reason": bye}))
        self.flush()
        self.transport.loseConnection()

    def _reply_error(self, code, message):
        self.deliver(events.error(code, message))


def _peer(transport):
    addr = transport.getPeer()
    host = getattr(addr, "host", None)
    return f"{host}:{addr.port}" if host is not None else str(addr)


class ChatFactory(Factory):
    """Builds a ChatProtocol per connection and flushes their output once per turn."""

    protocol = ChatProtocol

    def __init__(self, hub: Hub, clock: IReactorTime = None, max_line: int = DEFAULT_MAX_LINE,
                 grace: float = REGISTRATION_GRACE):
        if clock is None:
            from twisted.internet import reactor as clock
        self.hub = hub
        self.clock = clock
        self.max_line = max_line
        self.grace = grace
        self.connections = set()
        self._dirty = []
        self._flush_call = None

    def dirty(self, proto):
        self._dirty.append(proto)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self):
        """Write out every connection's queued events: one write per connection."""
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        for proto in dirty:
            proto.flush()
