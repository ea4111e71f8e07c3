"""The conversation as the desktop client sees it, with no Tk and no sockets.

:class:`ConversationModel` turns server events (JSON dicts, see
docs/protocol.rst) and connection-state changes into state a view can render:
the chat lines, the current room and its members, the user's nick, the
connection status and the unread count. Every change is announced to the
subscribers as ``(change, value)``, where ``change`` is one of the ``*_CHANGED``
names below (``LINE_ADDED`` carries the new :class:`Line`).

Unknown event types and unknown fields are ignored, so the server can grow
(batched ``presence`` events, replayed history) without breaking older clients.

:class:`InputHistory` is the Up/Down recall of the entry field.
"""

import re
import time
from datetime import datetime, timezone
from typing import Callable, List, Optional

from ..commands import fold

# Line kinds; the view gives each its own style.
OWN = "own"  # a message this user sent (the server's authoritative copy)
OTHER = "other"  # somebody else's message
ACTION = "action"  # /me, anybody's
PRIVATE = "private"  # /msg, to or from this user
SYSTEM = "system"  # joins, parts, nick changes, names, info
ERROR = "error"  # server errors, connection trouble
UNSENT = "unsent"  # typed while disconnected: queued or dropped
SEPARATOR = "separator"  # "new messages": replayed history above, live lines below

# Changes announced to subscribers.
LINE_ADDED = "line"
MEMBERS_CHANGED = "members"
ROOM_CHANGED = "room"
NICK_CHANGED = "nick"
STATUS_CHANGED = "status"
TITLE_CHANGED = "title"
LOGIN_CHANGED = "login"

# Login states (with an account name, ``login_name``).
LOGIN_NEEDED = "needed"  # waiting for the user's password
LOGIN_PENDING = "pending"  # /login sent, no answer yet
LOGGED_IN = "logged-in"
LOGIN_FAILED = "failed"

# Connection states.
DISCONNECTED = "disconnected"
CONNECTING = "connecting"
CONNECTED = "connected"
WAITING = "reconnecting"
STOPPED = "stopped"

APP_NAME = "twisted-chat"
_GUEST = re.compile(r"guest\d+$", re.IGNORECASE)


class Line:
    """One line of the chat log: ``[stamp] who text``, of a kind (a style)."""

    __slots__ = ("stamp", "kind", "who", "text", "history", "id")

    def __init__(self, stamp: str, kind: str, who: str, text: str,
                 history: bool = False, id: Optional[int] = None):
        self.stamp = stamp
        self.kind = kind
        self.who = who
        self.text = text
        self.history = history
        self.id = id

    def render(self) -> str:
        """The line as plain text, as the log shows it."""
        who = f"{self.who} " if self.who else ""
        return f"[{self.stamp}] {who}{self.text}"

    def __repr__(self) -> str:
        return f"<Line {self.kind} {self.render()!r}>"


def stamp_of(ts, now: float, tz=None) -> str:
    """``HH:MM`` in local time (or ``tz``) of an RFC 3339 ``ts``; ``now`` if absent or bad."""
    when = None
    if isinstance(ts, str):
        try:
            when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            when = None
    if when is None:
        when = datetime.fromtimestamp(now, timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(tz).strftime("%H:%M")


def _str(value, default="") -> str:
    return value if isinstance(value, str) else default


class ConversationModel:
    """Rooms, members, lines and connection state of one chat session.

    ``nick`` is the nick the server knows us by (a guest nick until it
    confirms ours); ``wanted_nick`` is the one to ask for on every
    (re)connect: the ``--nick`` option, then the last nick the server
    confirmed. ``room`` is the room we are in, or were in before the
    connection dropped (restored on reconnect).
    """

    def __init__(self, nick: Optional[str] = None, clock: Callable[[], float] = time.time,
                 tz=None, max_lines: int = 5000):
        self.clock = clock
        self.tz = tz
        self.max_lines = max_lines
        self.wanted_nick = nick
        self.nick = nick
        self.room: Optional[str] = None
        self.members: List[str] = []
        self.lines: List[Line] = []
        self.server: Optional[str] = None
        self.state = DISCONNECTED
        self.error: Optional[str] = None  # last connection problem, for the status bar
        self.retry_at: Optional[float] = None
        self.focused = True
        self.unread = 0
        self.login_name: Optional[str] = None  # the account to log in to, if any
        self.login_state: Optional[str] = None
        self._subscribers = []
        self._shown_ids = set()  # ids of messages shown, to skip replayed duplicates
        self._history_shown = 0  # replayed messages shown since the last history-end

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, callback: Callable[[str, object], None]) -> None:
        self._subscribers.append(callback)

    def _emit(self, change: str, value=None) -> None:
        for callback in list(self._subscribers):
            callback(change, value)

    # -- derived text --------------------------------------------------------

    def status_text(self) -> str:
        """The status bar: connecting, connected as NICK, reconnecting in N s, error."""
        if self.state == CONNECTING:
            return "Connecting…"
        if self.state == CONNECTED:
            where = f" in {self.room}" if self.room else ""
            return f"Connected as {self.nick}{where}"
        if self.state == WAITING:
            left = max(0, round((self.retry_at or 0) - self.clock()))
            why = f"{self.error.rstrip('.')} — " if self.error else ""
            return f"{why}reconnecting in {left} s"
        if self.state == STOPPED:
            return "Disconnected"
        return f"Error: {self.error}" if self.error else "Not connected"

    def title(self) -> str:
        """The window title: room, nick, and the unread count while unfocused."""
        parts = []
        if self.room:
            parts.append(f"#{self.room}")
        if self.nick:
            parts.append(self.nick)
        parts.append(APP_NAME)
        title = " — ".join(parts)
        if self.unread and not self.focused:
            title = f"({self.unread}) {title}"
        return title

    def is_me(self, nick) -> bool:
        return isinstance(nick, str) and self.nick is not None and fold(nick) == fold(self.nick)

    # -- local input ---------------------------------------------------------

    def add_line(self, kind: str, who: str, text: str, ts=None, history=False, id=None) -> Line:
        line = Line(stamp_of(ts, self.clock(), self.tz), kind, who, text, history, id)
        self.lines.append(line)
        if len(self.lines) > self.max_lines:
            del self.lines[: len(self.lines) - self.max_lines]
        self._emit(LINE_ADDED, line)
        return line

    def system(self, text: str, ts=None) -> Line:
        return self.add_line(SYSTEM, "--", text, ts)

    def problem(self, text: str) -> Line:
        return self.add_line(ERROR, "!!", text)

    def set_focus(self, focused: bool) -> None:
        self.focused = focused
        if focused:
            self.unread = 0
        self._emit(TITLE_CHANGED, self.title())

    def set_login_state(self, state: Optional[str]) -> None:
        if state != self.login_state:
            self.login_state = state
            self._emit(LOGIN_CHANGED, state)

    # -- connection state ----------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        self._emit(STATUS_CHANGED, self.status_text())

    def connecting(self) -> None:
        self.retry_at = None
        self._set_state(CONNECTING)

    def connected(self) -> None:
        """The TCP connection is up (the login lines are on their way)."""
        self.error = None
        self.retry_at = None
        self._set_state(CONNECTED)

    def connection_failed(self, reason: str) -> None:
        self.error = reason
        self._set_state(DISCONNECTED)

    def connection_lost(self, reason: str) -> None:
        was = self.state
        self.error = reason
        self.members = []
        self._emit(MEMBERS_CHANGED, [])
        if was == CONNECTED:
            self.problem(f"disconnected: {reason}")
        self._set_state(DISCONNECTED)

    def retrying(self, delay: float) -> None:
        self.retry_at = self.clock() + delay
        self._set_state(WAITING)

    def stopped(self) -> None:
        self.retry_at = None
        self._set_state(STOPPED)

    # -- server events -------------------------------------------------------

    def handle(self, event: dict) -> None:
        """Apply one server event; unknown types and fields are ignored."""
        handler = getattr(self, "_on_" + _str(event.get("type")).replace("-", "_"), None)
        if handler is not None:
            handler(event)

    def _count_unread(self, event) -> None:
        if not self.focused and not event.get("history"):
            self.unread += 1
            self._emit(TITLE_CHANGED, self.title())

    def _on_welcome(self, ev):
        nick = _str(ev.get("nick"))
        if nick:
            self._set_nick(nick)
        self.server = _str(ev.get("server")) or self.server
        self._emit(STATUS_CHANGED, self.status_text())
        if ev.get("motd"):
            self.system(_str(ev.get("motd")))

    def _set_nick(self, nick: str) -> None:
        if nick != self.nick:
            self.nick = nick
            self._emit(NICK_CHANGED, nick)
            self._emit(STATUS_CHANGED, self.status_text())
            self._emit(TITLE_CHANGED, self.title())

    def _on_join(self, ev):
        room, nick, ts = _str(ev.get("room")), _str(ev.get("nick")), ev.get("ts")
        if self.is_me(nick):
            self.room = room
            self.members = [self.nick]
            self._emit(ROOM_CHANGED, room)
            self._emit(MEMBERS_CHANGED, list(self.members))
            self._emit(STATUS_CHANGED, self.status_text())
            self._emit(TITLE_CHANGED, self.title())
            self.system(f"you joined {room}", ts)
            return
        if self._here(room) and nick not in self.members:
            self.members.append(nick)
            self._emit(MEMBERS_CHANGED, list(self.members))
        self.system(f"{nick} joined {room}", ts)

    def _here(self, room) -> bool:
        return self.room is not None and isinstance(room, str) and fold(room) == fold(self.room)

    def _on_part(self, ev):
        room, nick, ts = _str(ev.get("room")), _str(ev.get("nick")), ev.get("ts")
        reason = _str(ev.get("reason"))
        why = f" ({reason})" if reason else ""
        if self.is_me(nick):
            # Leaving for another room: the join that follows sets the new one.
            self.system(f"you left {room}{why}", ts)
            return
        if self._here(room) and nick in self.members:
            self.members.remove(nick)
            self._emit(MEMBERS_CHANGED, list(self.members))
        self.system(f"{nick} left {room}{why}", ts)

    def _on_quit(self, ev):
        # Protocol v2: a quit is said once, not per room.
        nick, ts = _str(ev.get("nick")), ev.get("ts")
        reason = _str(ev.get("reason"))
        if self.is_me(nick):
            return
        if nick in self.members:
            self.members.remove(nick)
            self._emit(MEMBERS_CHANGED, list(self.members))
        self.system(f"{nick} quit ({reason})" if reason else f"{nick} quit", ts)

    def _on_nick(self, ev):
        old, new, ts = _str(ev.get("old")), _str(ev.get("new")), ev.get("ts")
        if not new:
            return
        if old in self.members:
            self.members[self.members.index(old)] = new
            self._emit(MEMBERS_CHANGED, list(self.members))
        if self.is_me(old):
            if not _GUEST.match(new):
                # A guest nick is the server's choice (after a nick-taken, or
                # when a login took our name), never the one to ask for again.
                self.wanted_nick = new
            self._set_nick(new)
            self.system(f"you are now known as {new}", ts)
            if self.login_state == LOGIN_PENDING and fold(new) == fold(self.login_name or ""):
                self.set_login_state(LOGGED_IN)
        else:
            self.system(f"{old} is now known as {new}", ts)

    def _on_names(self, ev):
        room = _str(ev.get("room"))
        nicks = [n for n in ev.get("nicks") or () if isinstance(n, str)]
        if self._here(room):
            self.members = nicks
            self._emit(MEMBERS_CHANGED, list(nicks))
        self.system(f"in {room}: {', '.join(nicks) if nicks else '(nobody)'}")

    def _on_presence(self, ev):
        # A batched join/part summary for big rooms: members only, no lines.
        if not self._here(_str(ev.get("room"))):
            return
        left = {n for n in ev.get("left") or () if isinstance(n, str)}
        members = [n for n in self.members if n not in left]
        members += [n for n in ev.get("joined") or () if isinstance(n, str) and n not in members]
        self.members = members
        self._emit(MEMBERS_CHANGED, list(members))

    def _on_rooms(self, ev):
        rooms = [r for r in ev.get("rooms") or () if isinstance(r, dict)]
        listing = ", ".join(f"{_str(r.get('name'))} ({r.get('members', '?')})" for r in rooms)
        self.system(f"rooms: {listing or '(none)'}")

    def _replayed(self, ev) -> bool:
        """True for a history replay of a message already shown (say, after a reconnect)."""
        msg_id = ev.get("id")
        if not isinstance(msg_id, int):
            return False
        if ev.get("history") and msg_id in self._shown_ids:
            return True
        self._shown_ids.add(msg_id)
        if len(self._shown_ids) > 4 * self.max_lines:
            self._shown_ids = {line.id for line in self.lines if line.id is not None}
        return False

    def _on_message(self, ev):
        if self._replayed(ev):
            return
        nick, text, ts = _str(ev.get("nick")), _str(ev.get("text")), ev.get("ts")
        history = bool(ev.get("history"))
        if history:
            self._history_shown += 1
        mine = self.is_me(nick)
        if ev.get("action"):
            self.add_line(ACTION, f"* {nick}", text, ts, history, ev.get("id"))
        else:
            self.add_line(OWN if mine else OTHER, f"<{nick}>", text, ts, history, ev.get("id"))
        if not mine:
            self._count_unread(ev)

    def _on_history_end(self, ev):
        # The server's replay is over: a separator between it and what is new,
        # unless the replay showed nothing new (after a reconnect, say).
        shown, self._history_shown = self._history_shown, 0
        if shown:
            self.add_line(SEPARATOR, "", "new messages")
        elif ev.get("count") == 0:
            self.system(f"no earlier messages in #{_str(ev.get('room'))}")

    def _on_private(self, ev):
        if self._replayed(ev):
            return
        sender, to, text = _str(ev.get("from")), _str(ev.get("to")), _str(ev.get("text"))
        history = bool(ev.get("history"))
        if self.is_me(sender) and not self.is_me(to):
            self.add_line(PRIVATE, f"-> *{to}*", text, ev.get("ts"), history, ev.get("id"))
        else:
            self.add_line(PRIVATE, f"*{sender}*", text, ev.get("ts"), history, ev.get("id"))
            self._count_unread(ev)

    def _on_error(self, ev):
        code, message = _str(ev.get("code"), "error"), _str(ev.get("message"))
        if code == "nick-taken":
            message += " — pick another: type /nick NEWNAME or edit the nick field"
        elif code == "login-failed" and self.login_state == LOGIN_PENDING:
            self.set_login_state(LOGIN_FAILED)
        elif code == "login-required" and self.login_name is None:
            message += " — restart with --login NAME, or type /login NAME PASSWORD"
        self.problem(f"{code}: {message}")
        if code in ("nick-taken", "nick-invalid", "nick-reserved"):
            self._emit(NICK_CHANGED, self.nick)  # the nick field shows the real nick again

    def _on_info(self, ev):
        self.system(_str(ev.get("message")))

    def _on_pong(self, ev):
        self.system(f"pong {_str(ev.get('token'))}".rstrip())

    def _on_bye(self, ev):
        self.system(f"bye: {_str(ev.get('reason'))}")


class InputHistory:
    """Up/Down recall of what the user typed, like a shell."""

    def __init__(self, limit: int = 200):
        self.limit = limit
        self.items: List[str] = []
        self._pos = 0
        self._draft = ""

    def add(self, text: str) -> None:
        if text and (not self.items or self.items[-1] != text):
            self.items.append(text)
            del self.items[: -self.limit]
        self._pos = len(self.items)
        self._draft = ""

    def previous(self, current: str) -> str:
        """The entry's text after Up; ``current`` is what the entry holds now."""
        if self._pos == len(self.items):
            self._draft = current
        if self._pos > 0:
            self._pos -= 1
            return self.items[self._pos]
        return current

    def next(self, current: str) -> str:
        """The entry's text after Down."""
        if self._pos < len(self.items):
            self._pos += 1
            return self.items[self._pos] if self._pos < len(self.items) else self._draft
        return current
