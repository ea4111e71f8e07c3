"""The client's session: one model, whichever connection is current, and the reconnect loop.

:class:`ChatSession` is what the user's input and the protocol talk to. On
every (re)connect it logs in (``/mode json``, then ``/nick`` or ``/login``);
once the server has put the connection in its default room it joins again
every room of the model's list (leaving the default room if the user had
left it) and sends what the user typed while disconnected; the room that was
shown stays shown. It addresses what the user types to the shown
conversation (``/say ROOM``, ``/describe ROOM``, ``/msg PEER``) and tells
the model about connection state. :func:`connect` is the one connect path: any
client endpoint (``tcp:``, ``unix:``, later ``ssl:``) in a
:class:`~twisted.application.internet.ClientService` with backoff.

No Tk here: a bot or a test can drive a session without a display.
"""

from typing import Callable, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ..commands import fold
from . import model as m
from .model import UNSENT, ConversationModel
from .tls import describe_failure
from .protocol import ChatClientFactory

MAX_QUEUED = 100  # lines typed while disconnected that wait for the reconnect


class ChatSession:
    log = Logger()

    def __init__(self, model: ConversationModel, on_quit: Optional[Callable[[str], None]] = None,
                 max_queued: int = MAX_QUEUED):
        self.model = model
        self.on_quit = on_quit
        self.max_queued = max_queued
        self.protocol = None
        self.outbox: List[str] = []
        # With an account (--login NAME, the password bar, or a typed /login):
        # its password, kept in memory only, to log in again after a
        # reconnect; the room to go back to once the login has put us in one.
        self._password: Optional[str] = None
        self._login_typed = False  # a typed /login is forgotten when refused
        self._registered = False  # the current connection has had its first join

    # -- the connection's side -------------------------------------------------

    def connecting(self) -> None:
        self.model.connecting()

    def connect_failed(self, failure) -> None:
        if not failure.check(CancelledError):
            self.model.connection_failed(describe_failure(failure) or failure.getErrorMessage())

    def retrying(self, delay: float) -> None:
        self.model.retrying(delay)

    def connected(self, proto) -> None:
        self.protocol = proto
        self.model.connected()
        # Log in at once: the server registers a silent connection as a guest
        # after a short grace, and /mode does not register it.
        proto.send("/mode json")
        # The rooms are joined again once the server has registered us and put
        # us in its default room (a server without guests refuses /join until
        # a login is done), then the lines typed meanwhile go out.
        self._registered = False
        if self.model.login_name:
            self._send_login()
        elif self.model.wanted_nick:
            proto.send(f"/nick {self.model.wanted_nick}")

    def _restore(self, proto, default_room: str, listed: bool) -> None:
        """The first join of a connection: join the listed rooms again, send the queue.

        ``listed``: the default room was in the list before this join.
        """
        rooms = [c for c in self.model.rooms() if fold(c.name) != fold(default_room)]
        for conv in rooms:
            proto.send(f"/join {conv.name} {conv.join_key}" if conv.join_key
                       else f"/join {conv.name}")
        if rooms and not listed:
            # The user had left the default room (or chose another with --room).
            proto.send(f"/part {default_room}")
        queued, self.outbox = self.outbox, []
        for text in queued:
            proto.send(text)
        if queued:
            self.model.system(f"sent {len(queued)} line(s) typed while disconnected")

    def event_received(self, proto, event: dict) -> None:
        if proto is not self.protocol:
            return
        kind = event.get("type")
        was = self.model.login_state
        first_join = (kind == "join" and not self._registered
                      and self.model.is_me(event.get("nick")))
        listed = first_join and self.model.find_room(event.get("room")) is not None
        self.model.handle(event)
        if was == m.LOGIN_PENDING and self.model.login_state == m.LOGIN_FAILED:
            self._password = None  # ask again rather than retry a wrong one
            if self._login_typed:
                self.model.login_name = None
                self.model.set_login_state(None)
        if first_join:
            self._registered = True
            self._restore(proto, str(event.get("room")), listed)
        elif kind == "quit" and self._registered:
            self._reclaim(proto, event.get("nick"))

    def _reclaim(self, proto, nick) -> None:
        """The holder of our wanted nick quit: ask for it again.

        After a reconnect the nick can still be held by our old connection:
        on a single server until it notices the drop, in a cluster until
        the others judge a killed server gone. The server then gave us a
        guest nick; its members see the holder quit when the nick is free.
        """
        wanted = self.model.wanted_nick
        if (wanted and isinstance(nick, str) and not self.model.login_name
                and fold(nick) == fold(wanted) and not self.model.is_me(wanted)):
            proto.send(f"/nick {wanted}")

    def raw_line(self, proto, text: str) -> None:
        if proto is self.protocol:
            self.model.system(text)

    def disconnected(self, proto, reason) -> None:
        if proto is self.protocol:
            self.protocol = None
            self.model.connection_lost(_why(reason))

    def stopped(self) -> None:
        self.model.stopped()

    # -- the user's side -------------------------------------------------------

    def submit(self, text: str) -> None:
        """What the user typed: addressed to the shown conversation, then sent (or queued)."""
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if line.strip():
                self._submit_line(line)

    def _submit_line(self, line: str) -> None:
        word = line.split(None, 1)[0].lower() if line.startswith("/") else ""
        if word == "/login":
            # Through the same path as the password field: the password is
            # kept for reconnects and never shown in the window.
            parts = line.split(None, 2)
            if len(parts) == 3:
                self.use_login(parts[1], None)
                self._login_typed = True
                self.login(parts[2])
                return
        if word == "/quit":
            if self.on_quit is not None:
                self.on_quit(line[len(word):].strip())
                return
        elif word == "/mode":
            self.model.problem("the client needs JSON mode; /mode is not sent")
            return
        line = self._address(word, line)
        if line is None:
            return
        if self.protocol is not None:
            self.protocol.send(line)
        elif len(self.outbox) < self.max_queued:
            self.outbox.append(line)
            self.model.add_line(UNSENT, "(queued)", f"{line}  — not connected; "
                                "it will be sent when the connection is back")
        else:
            self.model.add_line(UNSENT, "(not sent)", f"{line}  — not connected and "
                                f"{self.max_queued} lines are already waiting")

    def _address(self, word: str, line: str) -> Optional[str]:
        """The line to send for what the user typed, or None when it is done here.

        Text goes to the shown room (``/say ROOM``) or peer (``/msg PEER``),
        ``/me`` to the shown room (``/describe ROOM``); ``/join`` of a room we
        are in just shows it; ``/part`` alone leaves the shown room; other
        commands go as typed.
        """
        conv = self.model.current
        if not word or line.startswith("//"):
            text = line[1:] if line.startswith("//") else line  # "//x" says "/x"
            if conv is None:
                return line
            return f"/say {conv.name} {text}" if conv.is_room else f"/msg {conv.name} {text}"
        args = line.split()[1:]
        if word == "/me" and conv is not None:
            text = line[len(word):].strip()
            if not conv.is_room:
                self.model.problem("/me works in rooms; this is a private conversation")
                return None
            return f"/describe {conv.name} {text}" if text else line
        if word == "/join" and args:
            room = self.model.find_room(args[0])
            if room is not None and room.joined and self.protocol is not None:
                self.model.select(room.key)
                return None
            self.model.request_join(args[0], args[1] if len(args) > 1 else None)
            return line
        if word == "/part":
            if args:
                target = self.model.find_room(args[0])
                if target is None and self.model.find_query(args[0]) is not None:
                    target = self.model.find_query(args[0])  # a peer: close its entry
            else:
                target = conv
            if target is None:
                return line
            if target.is_room and target.joined and self.protocol is not None:
                return line if args else f"/part {target.name}"
            self.model.close(target.key)  # not in it (now): nothing to tell the server
            return None
        if word == "/topic" and not args and conv is not None and conv.is_room:
            return f"/topic {conv.name}"
        return line

    # -- accounts ----------------------------------------------------------------

    def use_login(self, name: str, password: Optional[str] = None) -> None:
        """Log in to the account ``name`` on every connect (``password`` may come later)."""
        self.model.login_name = name
        self._password = password
        self._login_typed = False
        self.model.set_login_state(m.LOGIN_PENDING if password else m.LOGIN_NEEDED)

    def login(self, password: str) -> None:
        """The user gave the password (the window's field): log in now if connected."""
        if not password:
            return
        self._password = password
        self.model.set_login_state(m.LOGIN_PENDING)
        if self.protocol is not None:
            self._send_login()

    def _send_login(self) -> None:
        if self._password:
            self.model.set_login_state(m.LOGIN_PENDING)
            self.protocol.send(f"/login {self.model.login_name} {self._password}")
        else:
            self.model.set_login_state(m.LOGIN_NEEDED)

    def quit(self, reason: str = "") -> None:
        """Say goodbye to the server, if connected (the caller stops the service)."""
        if self.protocol is not None:
            self.protocol.send(f"/quit {reason}".rstrip())


def _why(reason) -> str:
    tls_problem = describe_failure(reason)
    if tls_problem:
        return tls_problem
    try:
        return reason.getErrorMessage()
    except AttributeError:
        return str(reason)


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Wraps an endpoint to tell the session about each attempt and its failure."""

    def __init__(self, endpoint, session: ChatSession):
        self._endpoint = endpoint
        self._session = session

    def connect(self, factory):
        self._session.connecting()
        d = self._endpoint.connect(factory)

        def failed(failure):
            self._session.connect_failed(failure)
            return failure

        return d.addErrback(failed)

    def __repr__(self):
        return repr(self._endpoint)


def default_retry_policy():
    """Backoff from 1 s up to 30 s (plus up to 1 s of jitter)."""
    return backoffPolicy(initialDelay=1.0, maxDelay=30.0)


def connect(endpoint, session: ChatSession, clock=None, retry_policy=None) -> ClientService:
    """A (not yet started) ClientService keeping ``session`` connected through ``endpoint``.

    This is the one connect path: whatever endpoint it gets (``tcp:``,
    ``unix:``, ``ssl:`` ...), reconnects back off and the session is told the
    delay, so the status bar can say "reconnecting in N s".
    """
    policy = retry_policy or default_retry_policy()

    def report(attempt: int) -> float:
        delay = policy(attempt)
        session.retrying(delay)
        return delay

    return ClientService(_ReportingEndpoint(endpoint, session), ChatClientFactory(session),
                         retryPolicy=report, clock=clock)
