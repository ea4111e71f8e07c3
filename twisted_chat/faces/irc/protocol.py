"""One IRC connection (:class:`IRCProtocol`) and its factory.

Bytes come in, are split into lines (LF or CRLF), bounded (ERR_INPUTTOOLONG
for a line over 512 bytes plus tags, and the connection stays), decoded as
strict UTF-8 (``FAIL <cmd> INVALID_UTF8`` otherwise), rate-limited (a client
over ``--rate`` is not dropped: its reading pauses until it may go on, as
IRC servers' "fake lag" does), parsed, and handed to one ``irc_VERB`` method
per command, which calls the hub. Hub events come back through
:meth:`IRCProtocol.deliver`, are rendered by :mod:`.render`, and leave once
per reactor turn through a bounded output. Once registered, a connection's
room events take the fan-out's fast path: its outlet's mode is the IRC
rendering of its tag variant (:class:`.render.Renderings`), so a room's share
is rendered once per variant and reaches it with every other member's, by
the express sends while its socket is idle plain TCP.

Registration: NICK, USER (and PASS, CAP, AUTHENTICATE) first; until then
nothing is sent to the hub but the nick check, and whatever the hub delivers
is held and follows the welcome numerics.
"""

import base64
import binascii
import time

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from ... import __version__, fanout, limits
from ... import commands as names
from ...cluster.members import Remote
from ...delivery.outlet import Outlet
from ...delivery.turn import Turn
from ...errors import ChatError
from ...hub import MAX_AWAY, MAX_REALNAME
from ...protocol import _tune_socket as tune_socket
from ...events import Event
from . import chathistory
from .message import MAX_LINE, BadMessage, LineTooLong, build, check_length, parse
from .render import (PLAIN, SHARED, Context, Renderer, Renderings, SharedCache, channel,
                     isupport_lines, render_event, track)

MAX_TOPIC = getattr(names, "MAX_TOPIC", 300)
MAX_REASON = getattr(names, "MAX_REASON", 300)
MAX_KEY = getattr(names, "MAX_KEY", 32)
REGISTRATION_TIMEOUT = 60.0
MAX_HELD = 5000  # events held for a connection that has not finished registering
MAX_TARGETS = 4  # TARGMAX for PRIVMSG and NOTICE
MAX_MODES = 4  # parameterised mode changes in one MODE command
SASL_CHUNK = 400

# Capabilities offered (CAP LS); the value after '=' is shown to 302 clients.
CAPS = {
    "server-time": "",
    "message-tags": "",
    "echo-message": "",
    "multi-prefix": "",
    "userhost-in-names": "",
    "cap-notify": "",
    "batch": "",
    "account-tag": "",
    "extended-join": "",
    "away-notify": "",
    "account-notify": "",
    "setname": "",
    chathistory.CAP: "",
    "sasl": "PLAIN",
}

# The hub's error codes as IRC numerics (the rest become NOTICEs).
_ERRORS = {
    "nick-taken": "ERR_NICKNAMEINUSE",
    "nick-reserved": "ERR_NICKNAMEINUSE",
    "nick-invalid": "ERR_ERRONEUSNICKNAME",
    "no-such-nick": "ERR_NOSUCHNICK",
    "room-invalid": "ERR_NOSUCHCHANNEL",
    "no-such-room": "ERR_NOSUCHCHANNEL",
    "not-operator": "ERR_CHANOPRIVSNEEDED",
    "invite-only": "ERR_INVITEONLYCHAN",
    "bad-key": "ERR_BADCHANNELKEY",
    "room-full": "ERR_CHANNELISFULL",
    "too-many-rooms": "ERR_TOOMANYCHANNELS",
}

# Commands allowed before registration completes.
_PRE_REGISTRATION = {"CAP", "PASS", "NICK", "USER", "AUTHENTICATE", "PING", "PONG", "QUIT"}
# Commands that never wait for the rate limit: leaving must always work.
_FREE = {"QUIT"}

log = Logger()


class IRCOutlet(Outlet):
    """The delivery layer's outlet, fed with IRC lines the face renders.

    Its member's events go to the face (``deliver``), which renders them for
    this connection's nick and capabilities and queues the bytes here. Its
    mode is the IRC rendering of the connection's tag variant; from
    registration on it is its member's sink (and keeps its express handle),
    so the room fan-out pushes each turn's share of a room to it as to a
    line-face outlet: the one rendering of that variant, or (for personal
    events: own JOIN, NICK) the face's own, through ``render_bytes``.
    """

    __slots__ = ()

    def deliver(self, event) -> None:
        self.face.deliver(event)

    def flush(self) -> None:
        ctx = self.face.ctx
        ctx.joined = ctx.after_names = None  # a turn's end ends a join's answer
        Outlet.flush(self)

    def shutdown(self, reason: str) -> None:
        output = self.output
        if output is None or output.closed:
            return
        self.face.outlet_shutdown()
        self.queue(_error_line(f"Closing link: {reason}"))
        self.flush()
        self.lose(None)

    def _overflowed(self) -> None:
        self.turn.counts.slow_consumers += 1
        self._out = []
        self.face.outlet_overflowed()
        self.transport.write(_error_line("Closing link: too slow (output backlog full)"))
        self.lose(limits.CLOSE_TIMEOUT)


def _error_line(text: str) -> bytes:
    return (build("ERROR", [text]) + "\r\n").encode("utf-8")


class IRCProtocol(Protocol):
    outlet = None
    member = None

    def __init__(self):
        self._buffer = b""
        self._discarding = False
        self._held = []  # hub events before the welcome numerics
        self._resume = None
        self._reg_timer = None
        self.registered = False
        self.closing = False
        self.ctx = Context()
        self.caps = self.ctx.caps
        self.cap_negotiating = False
        self.cap_version = 0
        self.wanted_nick = None
        self.user = None  # (username, realname) from USER
        self.password = None  # from PASS
        self.sasl = None  # "PLAIN" while an AUTHENTICATE exchange is under way
        self._sasl_buffer = ""
        self._login_pending = False
        self._claiming = None  # the nick asked for, while claimed across the cluster
        self._guest_nick = None
        self._invites = 0  # the hub's "invited ..." notices RPL_INVITING replaces
        self._batch = None  # (id, room) of the history batch open
        self._batches = 0

    # -- connection life ---------------------------------------------------------

    def connectionMade(self):
        f = self.factory
        addr = self.transport.getPeer()
        self.host = getattr(addr, "host", None)
        self.peer = f"{self.host}:{getattr(addr, 'port', '')}" if self.host else str(addr)
        outlet = self.outlet = IRCOutlet(f.turn, self.transport, self,
                                         f.renderings.mode(self.caps))
        refused = f.turn.admit(outlet, self.host)
        if refused is not None:
            self.closing = True
            self.transport.write(_error_line(f"Closing link: {refused}"))
            outlet.lose(limits.CLOSE_TIMEOUT)
            self.outlet = None
            return
        tune_socket(self.transport)  # as the line face: no Nagle, TCP keepalive
        outlet.open(f.max_backlog)
        self.bucket = limits.TokenBucket(f.rate, f.burst, f.clock)
        self.member = f.hub.connect(outlet.deliver, sink=None, host=self.host)
        self._guest_nick = self.member.nick
        self._reg_timer = f.clock.callLater(f.registration_timeout, self._registration_timeout)
        log.info("irc connect {peer}", peer=self.peer)

    def connectionLost(self, reason):
        self.closing = True
        for call in (self._reg_timer, self._resume):
            if call is not None and call.active():
                call.cancel()
        outlet = self.outlet
        if outlet is not None:
            outlet.stop()
        self._leave_hub("disconnected")
        if outlet is not None:
            outlet.release()

    def _leave_hub(self, reason):
        if self.member is not None:
            member, self.member = self.member, None
            self.factory.hub.disconnect(member, reason)
            log.info("irc disconnect {peer} {nick}: {reason}", peer=self.peer,
                     nick=member.nick, reason=reason)

    def close(self, reason, error_text):
        """Leave the hub with ``reason``, say ERROR, close the connection."""
        if self.closing:
            return
        if self.member is not None and self.registered:
            fanout.catch_up(self.member)  # what it was owed, then nothing more
        self.closing = True  # its own QUIT is not for it: ERROR is
        member = self.member
        if member is not None:
            # Nothing of the room's fan-out reaches a closing connection:
            # not through its sink either.
            member.sink = member.express = None
        self._leave_hub(reason)
        outlet = self.outlet
        outlet.queue(_error_line(error_text))
        outlet.flush()
        outlet.lose(limits.CLOSE_TIMEOUT)

    def outlet_overflowed(self):
        """The outlet's backlog is full: this client does not read."""
        log.warn("slow consumer {peer}: output backlog full; disconnecting", peer=self.peer)
        self._leave_hub("disconnected")
        self.closing = True

    def outlet_shutdown(self):
        """Server shutdown: stop, without telling the hub."""
        self.member = None
        self.closing = True

    def _registration_timeout(self):
        self._reg_timer = None
        if not self.registered:
            self.close("disconnected", "Closing link: registration timed out")

    # -- input -------------------------------------------------------------------

    def dataReceived(self, data):
        if self.closing:
            return
        self._buffer += data
        if self._resume is None:
            self._process()
        elif len(self._buffer) > 4 * MAX_LINE:
            self.transport.pauseProducing()  # still waiting for the rate limit

    def _process(self):
        while not self.closing:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE + 1:
                    self._buffer = b""
                    if not self._discarding:
                        self._discarding = True
                        self._too_long()
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip(b" "):
                continue
            if not self.bucket.take() and _verb(line) not in _FREE:
                # Over the rate: this line waits, and so does the socket
                # (TCP pushes back on the client) until a token is due.
                self._buffer = line + b"\n" + self._buffer
                self.transport.pauseProducing()
                wait = 1.0 / self.factory.rate if self.factory.rate > 0 else 0
                self._resume = self.factory.clock.callLater(wait, self._resume_input)
                return
            self.lineReceived(line)

    def _resume_input(self):
        self._resume = None
        if self.closing:
            return
        if not self.factory.turn.input_paused:
            self.transport.resumeProducing()
        self._process()

    def _too_long(self):
        self._send_numeric("ERR_INPUTTOOLONG", "Input line was too long")

    def lineReceived(self, line: bytes):
        try:
            check_length(line)
        except LineTooLong:
            self._too_long()
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._write_line(build("FAIL", [_verb(line) or "*", "INVALID_UTF8",
                                            "lines must be UTF-8; that line was dropped"],
                                   self.factory.renderer.server))
            return
        if "\0" in text or "\r" in text:
            text = text.replace("\0", "").replace("\r", "")
        try:
            msg = parse(text)
        except BadMessage:
            return
        self.handle(msg)

    def handle(self, msg):
        command = msg.command
        if not self.registered and command not in _PRE_REGISTRATION:
            if command in ("JOIN", "PRIVMSG", "NOTICE", "MODE", "WHO", "WHOIS", "NAMES",
                           "TOPIC", "PART", "LIST", "KICK", "INVITE", "AWAY", "ISON",
                           "SETNAME", "WHOWAS", "CHATHISTORY",
                           "USERHOST", "MOTD", "LUSERS"):
                self._send_numeric("ERR_NOTREGISTERED", "You have not registered")
            return
        method = getattr(self, "irc_" + command, None)
        if method is None:
            self._send_numeric("ERR_UNKNOWNCOMMAND", command, "Unknown command")
            return
        try:
            method(msg.params, msg)
        except ChatError as e:
            self._chat_error(e, command, msg.params)
        except Exception:
            log.failure("internal error handling {command} from {peer}", command=command,
                        peer=self.peer)
            self._notice("internal error: the server failed to handle that line")

    # -- output ------------------------------------------------------------------

    def deliver(self, event):
        """A hub event for this connection: rendered now, written at the end of the turn."""
        if self.closing:
            return
        if not self.registered:
            if self.member is not None:
                fanout.catch_up(self.member)  # held in the order it was owed
            self._held.append(event)
            if len(self._held) > MAX_HELD:
                self.close("disconnected", "Closing link: registration took too long")
            return
        if self.member is not None:
            fanout.catch_up(self.member)  # room events owed so far go first
        self._render(event)

    def _render(self, event):
        data = self.render_bytes(event)
        if data:
            self.outlet.queue(data)

    def render_bytes(self, event) -> bytes:
        """``event`` as this connection's bytes (b"": nothing to say); keeps
        what the connection has been told (its nick, a join's answer, an
        open history batch). The outlet's rendering calls it for the events
        that are personal in IRC modes, the face for everything it is given."""
        if self.closing:
            return b""
        ctx = self.ctx
        kind = event.type
        if kind == "welcome":
            return b""
        if kind == "info" and self._invites and \
                event.fields["message"].startswith("invited "):
            self._invites -= 1  # RPL_INVITING said it
            return b""
        if kind == "rooms":
            event = self._with_topics(event)
        elif kind in ("history-end", "error") and "label" in event.fields:
            lines = chathistory.ended(self, event)  # the end of a CHATHISTORY page
            return "".join([line + "\r\n" for line in lines]).encode("utf-8") if lines else b""
        # A replayed message's bytes in a batch are never shared: they carry
        # this connection's batch id (and the first one opens it). Without
        # the batch capability they are the same for every joiner of the
        # variant (10,000 joiners of a room are each replayed its history).
        history = bool(event.fields.get("history"))
        shared = (kind in SHARED and self._batch is None
                  and not (history and "batch" in self.caps))
        if shared:
            if kind in PLAIN and not history:
                # The room's share: rendered once per variant, cached on the event.
                track(event, ctx)
                return event.encode(self.outlet.mode)
            per_event = self.factory.cache.of(event)
            data = per_event.get(("bytes", ctx.variant))
            if data is not None:  # the same bytes as another member's
                track(event, ctx)
                self._renamed(event)
                return data
        lines = render_event(self.factory.renderer, self.factory.cache, event, ctx)
        self._renamed(event)
        if "batch" in self.caps:
            lines = self._batched(event, lines)
        data = "".join([line + "\r\n" for line in lines]).encode("utf-8") if lines else b""
        if shared:
            per_event["bytes", ctx.variant] = data
        return data

    def _renamed(self, event):
        ctx = self.ctx
        if event.type == "nick" and names.fold(event.fields["old"]) == names.fold(ctx.nick):
            ctx.nick = event.fields["new"]

    def _update_mode(self):
        """The capabilities changed: so may the rendering of this connection."""
        if self.outlet is not None:
            self.outlet.set_mode(self.factory.renderings.mode(self.caps))

    def _batched(self, event, lines):
        """A history replay as an IRCv3 ``chathistory`` batch: opened by its
        first replayed message, closed by its ``history-end`` (or by anything
        else, which cannot be part of it)."""
        server = self.factory.renderer.server
        if event.type == "message" and event.fields.get("history"):
            room = event.fields["room"]
            out = []
            if self._batch is not None and self._batch[1] != room:
                out.append(build("BATCH", ["-" + self._batch[0]], server))
                self._batch = None
            if self._batch is None:
                self._batches += 1
                self._batch = (f"h{self._batches}", room)
                out.append(build("BATCH", ["+" + self._batch[0], "chathistory", channel(room)],
                                 server))
            tag = "batch=" + self._batch[0]
            out += [("@" + tag + ";" + line[1:]) if line.startswith("@") else
                    f"@{tag} {line}" for line in lines]
            return out
        if self._batch is not None:
            end = build("BATCH", ["-" + self._batch[0]], server)
            self._batch = None
            if event.type == "history-end":
                return [end]  # the batch says where the replay ends
            return [end, *lines]
        return lines

    def _with_topics(self, event):
        rooms = self.factory.hub.rooms
        listed = []
        for r in event.fields["rooms"]:
            room = rooms.get(names.fold(r["name"]))
            topic = getattr(room, "topic", None) if room is not None else None
            listed.append(dict(r, topic=topic or ""))
        return Event("rooms", {"rooms": listed})

    def _write_line(self, line: str):
        """A reply of the face's own, in order behind the room events owed."""
        if not self.closing:
            if self.member is not None and self.registered:
                fanout.catch_up(self.member)
            self.outlet.queue(line.encode("utf-8") + b"\r\n")

    def _send_numeric(self, name, *params):
        self._write_line(self.factory.renderer.numeric(self.ctx, name, *params))

    def _notice(self, text):
        self._write_line(self.factory.renderer.notice(self.ctx, text))

    def _server_line(self, command, *params):
        self._write_line(build(command, params, self.factory.renderer.server))

    def _chat_error(self, e: ChatError, command: str, params):
        target = params[0] if params else "*"
        if command == "INVITE" and len(params) > 1:
            target = params[1]  # INVITE nick #room: the channel is second
        code = e.code
        name = _ERRORS.get(code)
        if code in ("nick-taken", "nick-reserved", "nick-invalid"):
            self._send_numeric(name, params[0] if params else "*", e.message)
        elif code == "not-in-room":
            if command in ("KICK", "MODE", "INVITE") and len(params) > 1 and \
                    not e.message.startswith("you "):
                nick = params[0] if command == "INVITE" else params[1]
                self._send_numeric("ERR_USERNOTINCHANNEL", nick, target, e.message)
            else:
                self._send_numeric("ERR_NOTONCHANNEL", target, e.message)
        elif code in ("banned", "moderated"):
            if command == "JOIN":
                self._send_numeric("ERR_BANNEDFROMCHAN", target, e.message)
            else:
                self._send_numeric("ERR_CANNOTSENDTOCHAN", target, e.message)
        elif code == "no-such-nick":
            self._send_numeric(name, _nick_param(command, params), e.message)
        elif name is not None:
            self._send_numeric(name, target, e.message)
        elif code == "usage":
            self._send_numeric("ERR_NEEDMOREPARAMS", command, e.message)
        elif code == "login-required":
            self._server_line("FAIL", command, "ACCOUNT_REQUIRED", e.message)
        else:
            self._server_line("FAIL", command, code.upper().replace("-", "_"), e.message)

    # -- registration ------------------------------------------------------------

    def irc_CAP(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "CAP", "Not enough parameters")
        sub = params[0].upper()
        if sub == "LS":
            if not self.registered:
                self.cap_negotiating = True
            if len(params) > 1 and params[1].isdigit():
                self.cap_version = max(self.cap_version, int(params[1]))
            offered = [f"{k}={v}" if v and self.cap_version >= 302 else k
                       for k, v in CAPS.items() if k != "sasl" or self.factory.accounts]
            self._cap("LS", " ".join(offered))
        elif sub == "LIST":
            self._cap("LIST", " ".join(sorted(self.caps)))
        elif sub == "REQ":
            if not self.registered:
                self.cap_negotiating = True
            wanted = (params[1] if len(params) > 1 else "").split()
            ok = all(w.lstrip("-") in CAPS and (w.lstrip("-") != "sasl" or self.factory.accounts)
                     for w in wanted)
            if not ok or not wanted:
                return self._cap("NAK", " ".join(wanted))
            for w in wanted:
                if w.startswith("-"):
                    self.caps.discard(w[1:])
                else:
                    self.caps.add(w)
            if self.member is not None:
                self.member.echo = "echo-message" in self.caps
                # A client that pages history itself asks for it after a JOIN.
                self.member.replay_on_join = chathistory.CAP not in self.caps
            self._update_mode()
            self._cap("ACK", " ".join(wanted))
        elif sub == "END":
            if not self.registered:
                self.cap_negotiating = False
                self._try_register()
        else:
            self._send_numeric("ERR_INVALIDCAPCMD", params[0], "Invalid CAP command")

    def _cap(self, sub, text):
        self._server_line("CAP", self.ctx.nick, sub, text)

    def irc_PASS(self, params, msg):
        if self.registered:
            return self._send_numeric("ERR_ALREADYREGISTRED", "You may not reregister")
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "PASS", "Not enough parameters")
        self.password = params[0]

    def irc_NICK(self, params, msg):
        if not params or not params[0]:
            return self._send_numeric("ERR_NONICKNAMEGIVEN", "No nickname given")
        nick = params[0]
        if self.registered:
            if nick != self.member.nick:  # the same nick again: nothing to say
                self.factory.hub.set_nick(self.member, nick)
            return
        try:
            names.valid_nick(nick)
        except ChatError as e:
            return self._send_numeric("ERR_ERRONEUSNICKNAME", nick, e.message)
        self.wanted_nick = nick
        self._try_register()

    def irc_USER(self, params, msg):
        if self.registered:
            return self._send_numeric("ERR_ALREADYREGISTRED", "You may not reregister")
        if len(params) < 4:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "USER", "Not enough parameters")
        self.user = (params[0][:16] or "user", params[3][:64])
        if self.member is not None:
            self.factory.hub.set_realname(self.member, params[3], quiet=True)
        self._try_register()

    def irc_AUTHENTICATE(self, params, msg):
        accounts = self.factory.accounts
        if accounts is None or "sasl" not in self.caps:
            return self._send_numeric("ERR_SASLFAIL", "SASL authentication failed")
        if self.member is not None and self.member.account is not None:
            return self._send_numeric("ERR_SASLALREADY", "You have already authenticated")
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "AUTHENTICATE",
                                      "Not enough parameters")
        arg = params[0]
        if self.sasl is None:
            if arg.upper() != "PLAIN":
                return self._send_numeric("RPL_SASLMECHS", "PLAIN", "are available SASL mechanisms")
            self.sasl, self._sasl_buffer = "PLAIN", ""
            self._server_line("AUTHENTICATE", "+")
            return
        if arg == "*":
            self.sasl = None
            return self._send_numeric("ERR_SASLABORTED", "SASL authentication aborted")
        if arg != "+":
            self._sasl_buffer += arg
        if len(self._sasl_buffer) > 4 * SASL_CHUNK:
            self.sasl = None
            return self._send_numeric("ERR_SASLTOOLONG", "SASL message too long")
        if len(arg) == SASL_CHUNK:
            return  # more to come
        self.sasl = None
        try:
            raw = base64.b64decode(self._sasl_buffer, validate=True).decode("utf-8")
            _authzid, name, password = raw.split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return self._send_numeric("ERR_SASLFAIL", "SASL authentication failed")
        self._login(name, password, sasl=True)

    def _login(self, name, password, sasl):
        """Check an account (SASL PLAIN or PASS); the hub hears of it once it holds."""
        accounts = self.factory.accounts
        self._login_pending = True
        d = accounts.login(self.host or self.peer, name, password)

        def succeeded(nick):
            self._login_pending = False
            if self.member is None or self.closing:
                return
            self.factory.hub.login(self.member, nick)
            if sasl:
                mask = self.factory.renderer.source(nick)
                self._send_numeric("RPL_LOGGEDIN", mask, nick, f"You are now logged in as {nick}")
                self._send_numeric("RPL_SASLSUCCESS", "SASL authentication successful")
            self._try_register()

        def failed(failure):
            self._login_pending = False
            failure.trap(ChatError)
            if self.member is None or self.closing:
                return
            if sasl:
                self._send_numeric("ERR_SASLFAIL", "SASL authentication failed")
            else:
                self._send_numeric("ERR_PASSWDMISMATCH", "Password incorrect")
                self.close("disconnected", "Closing link: bad password")

        d.addCallbacks(succeeded, failed).addErrback(
            lambda f: log.failure("login of {peer} went wrong", f, peer=self.peer))

    def _try_register(self):
        if (self.registered or self.cap_negotiating or self.user is None
                or self.wanted_nick is None or self._login_pending
                or self._claiming is not None or self.closing):
            return
        hub, member = self.factory.hub, self.member
        if self.password is not None and member.account is None and self.factory.accounts:
            name, sep, password = self.password.partition(":")
            if not sep:
                name, password = self.wanted_nick, self.password
            self.password = None
            self._login(name, password, sasl=False)
            return
        if member.account is None:
            try:
                if self.wanted_nick != member.nick:
                    if getattr(hub, "cluster", None) is not None:
                        # The welcome waits for the nick's claim across the
                        # cluster: 001 names the nick asked for, or 433 comes first.
                        self._claiming = self.wanted_nick
                        hub.set_nick(member, self.wanted_nick, self._claim_answered)
                        return
                    hub.set_nick(member, self.wanted_nick)
            except ChatError as e:
                self._claiming = None
                self._chat_error(e, "NICK", [self.wanted_nick])
                self.wanted_nick = None
                return
        if self._reg_timer is not None and self._reg_timer.active():
            self._reg_timer.cancel()
        self._reg_timer = None
        self.ctx.nick = member.nick
        member.echo = "echo-message" in self.caps
        self._welcome()
        fanout.catch_up(member)  # into _held, behind what is there
        self.registered = True
        held, self._held = self._held, []
        for event in held:
            if event.type == "nick" and event.fields["new"] == member.nick:
                continue  # the client knows its nick from RPL_WELCOME
            if event.type == "info" and event.fields["message"].startswith("you are already"):
                continue
            self._render(event)
        # From now on the room fan-out serves it as any other face's member:
        # the room's share in this connection's mode, in bulk.
        outlet = self.outlet
        member.sink = outlet
        outlet.member = member
        outlet._express()
        if hub.may_appear(member) if hasattr(hub, "may_appear") else True:
            hub.register(member)
        else:
            self._notice("this server has no guests: log in with SASL PLAIN or "
                         "PASS account:password")
        log.info("irc registered {peer} as {nick}", peer=self.peer, nick=member.nick)

    def _claim_answered(self, ok):
        """The cluster's answer to the claim of the nick asked for before
        registering: welcomed under it, or ERR_NICKNAMEINUSE."""
        nick, self._claiming = self._claiming, None
        if self.closing or self.member is None:
            return
        if not ok:
            if self.wanted_nick == nick:
                self.wanted_nick = None
            self._chat_error(ChatError("nick-taken", f"the nick {nick} is taken"), "NICK",
                             [nick])
        self._try_register()

    def _welcome(self):
        f, hub = self.factory, self.factory.hub
        nick, server = self.ctx.nick, f.renderer.server
        version = f"twisted-chat-{__version__}"
        self._send_numeric("RPL_WELCOME", f"Welcome to the {hub.server_name} IRC network, "
                                          f"{f.renderer.source(nick)}")
        self._send_numeric("RPL_YOURHOST", f"Your host is {server}, running version {version}")
        self._send_numeric("RPL_CREATED", "This server was created " + time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(f.started)))
        self._send_numeric("RPL_MYINFO", server, version, "", "bmntiklov", "bklov")
        for tokens in isupport_lines(self.isupport()):
            self._send_numeric("RPL_ISUPPORT", *tokens, "are supported by this server")
        self.irc_LUSERS([], None)
        self.irc_MOTD([], None)

    def isupport(self):
        hub = self.factory.hub
        max_rooms = getattr(hub, "max_rooms", 50)
        network = hub.server_name.replace(" ", "-")
        return [
            f"AWAYLEN={MAX_AWAY}",
            "CASEMAPPING=rfc8265",
            f"CHANLIMIT=#:{max_rooms}",
            "CHANMODES=b,k,l,imnt",
            f"CHANNELLEN={names.MAX_ROOM + 1}",
            "CHANTYPES=#",
            f"KEYLEN={MAX_KEY}",
            f"KICKLEN={MAX_REASON}",
            f"MODES={MAX_MODES}",
            f"NETWORK={network}",
            f"NICKLEN={names.MAX_NICK}",
            "PREFIX=(ov)@+",
            f"TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},JOIN:,PART:,NAMES:1,WHOIS:1,"
            "KICK:1,LIST:",
            f"TOPICLEN={MAX_TOPIC}",
            "UTF8ONLY",
            *chathistory.ISUPPORT,
        ]

    def irc_LUSERS(self, params, msg):
        # The whole chat's users and channels (every server of a cluster),
        # this server's clients; counts the hub and the cluster keep, since
        # each welcome asks (counting members would be O(members) a welcome).
        hub = self.factory.hub
        cluster = hub.cluster
        others = len(cluster.servers) if cluster is not None else 0
        local, users = hub.registered_count, hub.users()
        self._send_numeric("RPL_LUSERCLIENT", f"There are {users} users and 0 invisible on "
                                              f"{1 + others} servers")
        self._send_numeric("RPL_LUSERCHANNELS", str(hub.rooms_formed()), "channels formed")
        self._send_numeric("RPL_LUSERME", f"I have {local} clients and {others} servers")
        self._send_numeric("RPL_LOCALUSERS", str(local), str(hub.peak_count),
                           f"Current local users {local}, max {hub.peak_count}")
        self._send_numeric("RPL_GLOBALUSERS", str(users), str(hub.peak_users),
                           f"Current global users {users}, max {hub.peak_users}")

    def irc_MOTD(self, params, msg):
        hub = self.factory.hub
        if not hub.motd:
            return self._send_numeric("ERR_NOMOTD", "MOTD File is missing")
        server = self.factory.renderer.server
        self._send_numeric("RPL_MOTDSTART", f"- {server} Message of the day - ")
        for line in hub.motd.splitlines() or [""]:
            self._send_numeric("RPL_MOTD", f"- {line}")
        self._send_numeric("RPL_ENDOFMOTD", "End of /MOTD command.")

    def irc_PING(self, params, msg):
        token = params[0] if params else ""
        if not self.registered:
            return self._server_line("PONG", self.factory.renderer.server, token)
        # Through the hub, in order: a PONG follows everything accepted before it.
        self.factory.hub.send(self.member, Event("pong", {"token": token}))

    def irc_PONG(self, params, msg):
        pass

    irc_CHATHISTORY = chathistory.command

    def irc_QUIT(self, params, msg):
        text = names.strip_controls(params[0]).strip()[:MAX_REASON] if params else ""
        self.close(f"quit: {text}" if text else "quit",
                   f"Closing link: {'Quit: ' + text if text else 'Client Quit'}")

    # -- channels ------------------------------------------------------------------

    def _room_name(self, target):
        """The room of a channel name: '#lobby' -> 'lobby'."""
        if not target.startswith("#"):
            raise ChatError("room-invalid", f"{target}: channel names start with #")
        return target[1:]

    def irc_JOIN(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "JOIN", "Not enough parameters")
        hub, member = self.factory.hub, self.member
        if params[0] == "0":
            for room in list(member.rooms):
                hub.part(member, room.name)
            return
        keys = params[1].split(",") if len(params) > 1 else []
        for i, target in enumerate(params[0].split(",")):
            if not target:
                continue
            key = keys[i] if i < len(keys) and keys[i] else None
            try:
                room = self._room_name(target)
                existing = hub.rooms.get(names.fold(names.valid_room(room)))
                if existing is not None and existing in member.rooms:
                    continue  # already there: IRC servers say nothing
                hub.join(member, room, key)
            except ChatError as e:
                self._chat_error(e, "JOIN", [target])

    def irc_PART(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "PART", "Not enough parameters")
        reason = names.strip_controls(params[1]).strip()[:MAX_REASON] if len(params) > 1 else None
        for target in params[0].split(","):
            try:
                self.factory.hub.part(self.member, self._room_name(target), reason or None)
            except ChatError as e:
                if e.code == "no-such-room":
                    self._send_numeric("ERR_NOSUCHCHANNEL", target, e.message)
                else:
                    self._chat_error(e, "PART", [target])

    def irc_PRIVMSG(self, params, msg, notice=False):
        command = "NOTICE" if notice else "PRIVMSG"
        if not params:
            if not notice:
                self._send_numeric("ERR_NORECIPIENT", f"No recipient given ({command})")
            return
        if len(params) < 2 or not params[1]:
            if not notice:
                self._send_numeric("ERR_NOTEXTTOSEND", "No text to send")
            return
        text, action = params[1], False
        if text.startswith("\x01"):
            body = text[1:].rstrip("\x01")
            verb, _, rest = body.partition(" ")
            if verb.upper() != "ACTION":
                return  # other CTCP requests have no meaning beyond IRC: dropped
            text, action = rest, True
        text = names.strip_controls(text)
        if not text.strip():
            if not notice:
                self._send_numeric("ERR_NOTEXTTOSEND", "No text to send")
            return
        hub, member = self.factory.hub, self.member
        for target in params[0].split(",")[:MAX_TARGETS]:
            try:
                if target.startswith("#"):
                    hub.say(member, text, room=target[1:], action=action)
                else:
                    hub.private(member, target, f"* {member.nick} {text}" if action else text)
                    away = None if notice else self._anyone(target)
                    if away is not None and away.away:
                        self._send_numeric("RPL_AWAY", away.nick, away.away)
            except ChatError as e:
                if notice:
                    continue
                if e.code == "not-in-room":
                    self._send_numeric("ERR_CANNOTSENDTOCHAN", target, e.message)
                elif e.code in ("no-such-room", "room-invalid"):
                    self._send_numeric("ERR_NOSUCHCHANNEL", target, e.message)
                else:
                    self._chat_error(e, command, [target])

    def irc_NOTICE(self, params, msg):
        self.irc_PRIVMSG(params, msg, notice=True)

    def irc_TOPIC(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "TOPIC", "Not enough parameters")
        target = params[0]
        hub = self.factory.hub
        if len(params) == 1:
            room = hub.rooms.get(names.fold(names.valid_room(self._room_name(target))))
            if room is None:
                return self._send_numeric("ERR_NOSUCHCHANNEL", target, "No such channel")
            if not room.topic:
                return self._send_numeric("RPL_NOTOPIC", channel(room.name), "No topic is set")
            self._send_numeric("RPL_TOPIC", channel(room.name), room.topic)
            self._send_numeric("RPL_TOPICWHOTIME", channel(room.name),
                               room.topic_by or self.factory.renderer.server,
                               str(int(room.topic_t or 0)))
            return
        text = names.strip_controls(params[1]).strip()[:MAX_TOPIC]
        hub.topic(self.member, self._room_name(target), text)

    def irc_NAMES(self, params, msg):
        if not params:
            return self._send_numeric("RPL_ENDOFNAMES", "*", "End of /NAMES list")
        for target in params[0].split(","):
            try:
                self.factory.hub.who(self.member, self._room_name(target))
            except ChatError:
                self._send_numeric("RPL_ENDOFNAMES", target, "End of /NAMES list")

    def irc_LIST(self, params, msg):
        self.factory.hub.list_rooms(self.member)

    def irc_KICK(self, params, msg):
        if len(params) < 2:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "KICK", "Not enough parameters")
        reason = names.strip_controls(params[2]).strip()[:MAX_REASON] if len(params) > 2 else None
        room = self._room_name(params[0])
        for nick in params[1].split(","):
            try:
                self.factory.hub.kick(self.member, room, nick, reason or None)
            except ChatError as e:
                self._chat_error(e, "KICK", [params[0], nick])

    def irc_INVITE(self, params, msg):
        if len(params) < 2:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "INVITE", "Not enough parameters")
        nick, target = params[0], params[1]
        hub = self.factory.hub
        try:
            self._invites += 1
            hub.invite(self.member, nick, self._room_name(target))
        except ChatError as e:
            self._invites -= 1
            if e.code == "usage" and "already in" in e.message:
                return self._send_numeric("ERR_USERONCHANNEL", nick, target, e.message)
            raise
        holder = self._anyone(nick)
        self._send_numeric("RPL_INVITING", holder.nick if holder else nick, target)

    def irc_MODE(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NEEDMOREPARAMS", "MODE", "Not enough parameters")
        target = params[0]
        hub, member = self.factory.hub, self.member
        if not target.startswith("#"):
            if names.fold(target) != names.fold(member.nick):
                if target and target in hub.members:
                    return self._send_numeric("ERR_USERSDONTMATCH",
                                              "Cannot change mode for other users")
                return self._send_numeric("ERR_NOSUCHNICK", target, "No such nick")
            if len(params) == 1:
                return self._send_numeric("RPL_UMODEIS", "+")
            return self._send_numeric("ERR_UMODEUNKNOWNFLAG", "Unknown MODE flag")
        room = self._room_name(target)
        if len(params) == 1:
            hub.flags(member, room)
            return
        args = list(params[2:])
        on, changes = True, 0
        for letter in params[1]:
            if letter in "+-":
                on = letter == "+"
                continue
            if letter in "ov":
                if not args:
                    continue
                nick = args.pop(0)
                changes += 1
                if changes > MAX_MODES:
                    break
                method = {("o", True): hub.op, ("o", False): hub.deop,
                          ("v", True): hub.voice, ("v", False): hub.devoice}[letter, on]
                self._mode_call(method, target, nick, member, room, nick)
            elif letter == "b":
                if not args:
                    if on:
                        self._ban_list(target, room)
                    continue
                mask = args.pop(0)
                changes += 1
                if changes > MAX_MODES:
                    break
                if on:
                    self._mode_call(hub.ban, target, mask, member, room, _mask_nick(mask))
                else:
                    self._mode_call(hub.unban, target, mask, member, room,
                                    self._ban_entry(room, mask))
            elif letter in "tmi":
                flag = {"t": "topic-lock", "m": "moderated", "i": "invite-only"}[letter]
                self._mode_call(hub.set_flag, target, None, member, room, flag, on)
            elif letter == "k":
                if on:
                    if not args:
                        continue
                    key = args.pop(0)[:MAX_KEY]
                    self._mode_call(hub.set_flag, target, None, member, room, "key", key)
                else:
                    if args:
                        args.pop(0)
                    self._mode_call(hub.set_flag, target, None, member, room, "key", None)
            elif letter == "l":
                if on:
                    if not args:
                        continue
                    value = args.pop(0)
                    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 10**6:
                        self._send_numeric("ERR_INVALIDMODEPARAM", target, "l", value,
                                           "the limit is a positive number")
                        continue
                    self._mode_call(hub.set_flag, target, None, member, room, "limit",
                                    int(value))
                else:
                    self._mode_call(hub.set_flag, target, None, member, room, "limit", None)
            elif letter == "n":
                continue  # always on: only members speak in a room
            else:
                self._send_numeric("ERR_UNKNOWNMODE", letter, "is an unknown mode char to me")

    def _ban_list(self, target, room_name):
        """MODE #room +b: the bans, to operators (the core's rule); others, who
        ask as every client does on join, get the end of the list and why."""
        hub = self.factory.hub
        room = hub.rooms.get(names.fold(names.valid_room(room_name)))
        if room is not None and not hub.is_op(self.member, room):
            return self._send_numeric("RPL_ENDOFBANLIST", channel(room.name),
                                      "End of channel ban list (shown to operators only)")
        self._mode_call(hub.ban, target, None, self.member, room_name)

    def _mode_call(self, method, target, nick, *args):
        try:
            method(*args)
        except ChatError as e:
            self._chat_error(e, "MODE", [target, nick] if nick else [target])

    def _ban_entry(self, room_name, mask):
        """The hub's ban entry for a mask given to -b: the entry itself
        (account:NAME, address:IP) or the ban of that nick."""
        if mask.startswith(("account:", "address:")):
            return mask
        room = self.factory.hub.rooms.get(names.fold(room_name))
        nick = names.fold(_mask_nick(mask))
        for ban in getattr(room, "bans", ()):
            if names.fold(ban[1]) == nick:
                return ban[0]
        return mask

    # -- users ---------------------------------------------------------------------

    def _anyone(self, nick):
        """The member called ``nick``, registered, on this server or (a
        :class:`~twisted_chat.cluster.members.Remote`) another of the
        cluster; None if nobody is."""
        hub = self.factory.hub
        key = names.fold(nick)
        m = hub.members.get(key)
        if m is not None:
            return m if getattr(m, "registered", True) else None
        cluster = getattr(hub, "cluster", None)
        return cluster.member(key) if cluster is not None else None

    def _who_line(self, room_name, m, marks=""):
        r = self.factory.renderer
        flags = "G" if getattr(m, "away", None) else "H"
        if "o" in marks:
            flags += "@"
        if "v" in marks and ("multi-prefix" in self.caps or len(flags) == 1):
            flags += "+"
        self._send_numeric("RPL_WHOREPLY", room_name, m.nick, r.host, r.server, m.nick, flags,
                           f"0 {_realname(m)}")

    def _marks(self, m, room):
        """A local member's marks in ``room``: o (operator), v (voiced)."""
        return ("o" if self.factory.hub.is_op(m, room) else "") + \
            ("v" if m in room.voiced else "")

    def irc_WHO(self, params, msg):
        hub = self.factory.hub
        mask = params[0] if params else "*"
        cluster = getattr(hub, "cluster", None)
        if mask.startswith("#"):
            key = names.fold(mask[1:])
            room = hub.rooms.get(key)
            ch = channel(room.name) if room is not None else mask
            if room is not None:
                for m in list(room.members):
                    self._who_line(ch, m, self._marks(m, room))
            if cluster is not None:  # the other servers' members of the room
                for m in cluster.members_of(key):
                    self._who_line(ch, m, m.marks.get(key, ""))
        else:
            m = self._anyone(mask)
            if m is not None:
                self._who_line("*", m)
        self._send_numeric("RPL_ENDOFWHO", mask, "End of /WHO list")

    def irc_WHOIS(self, params, msg):
        if not params:
            return self._send_numeric("ERR_NONICKNAMEGIVEN", "No nickname given")
        hub, r = self.factory.hub, self.factory.renderer
        nick = params[-1]
        m = self._anyone(nick)
        if m is None:
            self._send_numeric("ERR_NOSUCHNICK", nick, "No such nick/channel")
            return self._send_numeric("RPL_ENDOFWHOIS", nick, "End of /WHOIS list")
        self._send_numeric("RPL_WHOISUSER", m.nick, m.nick, r.host, "*", _realname(m))
        if isinstance(m, Remote):  # a member of another server
            marked = [(name, m.marks.get(key, "")) for key, name in m.rooms.items()]
        else:
            marked = [(room.name, self._marks(m, room)) for room in m.rooms]
        rooms = [("@" if "o" in marks else "+" if "v" in marks else "") + channel(name)
                 for name, marks in marked]
        if rooms:
            self._send_numeric("RPL_WHOISCHANNELS", m.nick, " ".join(rooms))
        self._send_numeric("RPL_WHOISSERVER", m.nick, r.server, hub.server_name)
        if getattr(m, "away", None):
            self._send_numeric("RPL_AWAY", m.nick, m.away)
        if m.account is not None:
            self._send_numeric("RPL_WHOISACCOUNT", m.nick, m.account, "is logged in as")
        self._send_numeric("RPL_ENDOFWHOIS", m.nick, "End of /WHOIS list")

    def irc_AWAY(self, params, msg):
        """AWAY :text marks one away, AWAY alone back: 306/305, and AWAY to
        neighbours holding away-notify (the hub's ``away`` event)."""
        self.factory.hub.set_away(self.member, params[0] if params else None)

    def irc_SETNAME(self, params, msg):
        """SETNAME :real name (the setname capability): SETNAME back to
        oneself and to neighbours holding the capability."""
        text = names.strip_controls(params[0]).strip() if params else ""
        if not text or len(text) > MAX_REALNAME:
            return self._server_line("FAIL", "SETNAME", "INVALID_REALNAME",
                                     f"a real name has 1 to {MAX_REALNAME} characters")
        self.factory.hub.set_realname(self.member, text)

    def irc_WHOWAS(self, params, msg):
        """WHOWAS nick [count]: who last had the nick (the hub keeps the
        last few nicks given up, renamed from or gone)."""
        if not params or not params[0]:
            return self._send_numeric("ERR_NONICKNAMEGIVEN", "No nickname given")
        nick = params[0].split(",")[0]
        count = params[1] if len(params) > 1 else ""
        limit = min(int(count), 10) if count.isascii() and count.isdigit() and \
            0 < int(count) else 5
        r = self.factory.renderer
        found = self.factory.hub.departed(nick, limit)
        if not found:
            self._send_numeric("ERR_WASNOSUCHNICK", nick, "There was no such nickname")
        for was, realname, account, t in found:
            self._send_numeric("RPL_WHOWASUSER", was, was, r.host, "*", realname or was)
            self._send_numeric("RPL_WHOISSERVER", was, r.server, time.strftime(
                "%a %b %d %H:%M:%S %Y UTC", time.gmtime(t)))
            if account is not None:
                self._send_numeric("RPL_WHOISACCOUNT", was, account, "was logged in as")
        self._send_numeric("RPL_ENDOFWHOWAS", nick, "End of WHOWAS")

    def irc_ISON(self, params, msg):
        found = []
        for word in " ".join(params).split():
            m = self._anyone(word)
            if m is not None:
                found.append(m.nick)
        self._send_numeric("RPL_ISON", " ".join(found))

    def irc_USERHOST(self, params, msg):
        r = self.factory.renderer
        replies = []
        for nick in params[:5]:
            m = self._anyone(nick)
            if m is not None:
                replies.append(f"{m.nick}=+{m.nick}@{r.host}")
        self._send_numeric("RPL_USERHOST", " ".join(replies))


def _verb(line: bytes) -> str:
    """The command word of a raw line, for rate and error decisions."""
    rest = line.lstrip(b" ")
    if rest.startswith(b"@"):
        rest = rest.partition(b" ")[2].lstrip(b" ")
    if rest.startswith(b":"):
        rest = rest.partition(b" ")[2].lstrip(b" ")
    word = rest.partition(b" ")[0]
    return word.decode("ascii", "replace").upper() if word.isascii() else ""


def _realname(member) -> str:
    return getattr(member, "realname", None) or member.nick


def _mask_nick(mask: str) -> str:
    """The nick of a ban mask: 'bob!*@*' -> 'bob'."""
    return mask.split("!", 1)[0]


def _nick_param(command, params):
    if command in ("KICK", "MODE") and len(params) > 1:
        return params[1]
    return params[0] if params else "*"


class IRCFactory(Factory):
    """IRC connections on one or more ports. The hub, the delivery
    :class:`~twisted_chat.delivery.turn.Turn` (flush, connection limits,
    back-pressure, shutdown) and the accounts are the server's, shared with
    every other face; a Turn of its own is made when none is given (tests)."""

    protocol = IRCProtocol

    def __init__(self, hub, turn: Turn = None, clock=None, accounts=None,
                 max_backlog=limits.DEFAULT_MAX_BACKLOG, rate=limits.DEFAULT_RATE,
                 burst=limits.DEFAULT_BURST, registration_timeout=REGISTRATION_TIMEOUT):
        if turn is None:
            turn = Turn(hub, clock)
        self.hub = hub
        self.turn = turn
        self.clock = turn.clock
        self.accounts = accounts
        self.max_backlog = max_backlog
        self.rate = rate
        self.burst = burst
        self.registration_timeout = registration_timeout
        self.renderer = Renderer(hub.server_name, self._account_of)
        # The delivery layer's renderings of this server's IRC lines: the
        # outlets' modes, one per tag variant.
        self.renderings = Renderings(self.renderer)
        # Lines of the events rendered per recipient (own JOIN, NICK, history)
        # per tag variant: rendered once, however many IRC members get them.
        self.cache = SharedCache()
        self.started = self.clock.seconds()

    def _account_of(self, nick):
        """The account ``nick`` is logged in to (account-tag, extended-join)."""
        member = self.hub.members.get(names.fold(nick))
        return member.account if member is not None else None
