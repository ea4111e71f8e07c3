"""The conversations as the desktop client sees them, with no Tk and no sockets.

:class:`ConversationModel` turns server events (protocol v2 JSON dicts, see
docs/protocol.rst) and connection-state changes into state a view can render:
one :class:`Conversation` per joined room (its lines, members with operator
and voice marks, topic, unread count and mention mark) and one per private
peer, which of them is shown, the user's nick, the connection status and the
unread count of the title. Every change is announced to the subscribers as
``(change, value)``, where ``change`` is one of the ``*_CHANGED`` names below
(``LINE_ADDED`` carries a new :class:`Line` of the shown conversation).

Unknown event types and unknown fields are ignored, so the server can grow
(batched ``presence`` events, replayed history) without breaking older clients.

:class:`InputHistory` is the Up/Down recall of the entry field.
"""

import re
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

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
CONVERSATIONS_CHANGED = "conversations"  # the list: added, removed, unread, mention
TOPIC_CHANGED = "topic"  # the shown room's topic

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

# Conversation kinds.
ROOM = "room"
QUERY = "private"  # private messages with one peer


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


def conversation_key(kind: str, name: str) -> str:
    """The dictionary key of a room (``#`` + folded name) or a peer (``*`` + folded nick)."""
    return ("#" if kind == ROOM else "*") + fold(name)


class Conversation:
    """One entry of the list: a room the user is in (or was, before a drop), or a peer.

    ``members`` keeps the server's order; ``ops`` and ``voiced`` hold folded
    nicks. ``joined`` is False while the connection is down (the room is kept,
    to be joined again) and for a ``--room`` not joined yet. ``join_key`` is
    the key the user joined with, for the rejoin.
    """

    def __init__(self, kind: str, name: str):
        self.kind = kind
        self.name = name
        self.key = conversation_key(kind, name)
        self.lines: List[Line] = []
        self.members: List[str] = []
        self.ops = set()
        self.voiced = set()
        self.topic = ""
        self.topic_by = ""
        self.topic_stamp = ""
        self.unread = 0
        self.mention = False
        self.joined = False
        self.join_key: Optional[str] = None
        self.history_shown = 0  # replayed messages shown since the last history-end

    @property
    def is_room(self) -> bool:
        return self.kind == ROOM

    def label(self) -> str:
        """The list entry: ``#room`` or ``*peer*``, the unread count and a mention mark."""
        text = f"#{self.name}" if self.is_room else f"*{self.name}*"
        if self.unread:
            text += f" ({self.unread})"
        if self.mention:
            text += " !"
        return text

    def mark(self, nick: str) -> str:
        """``@`` for an operator, ``+`` for a voiced member, else nothing."""
        folded = fold(nick)
        if folded in self.ops:
            return "@"
        if folded in self.voiced:
            return "+"
        return ""

    def marked_members(self) -> List[str]:
        """The member list as shown: operators, then voiced members, then the rest, by name."""
        order = {"@": 0, "+": 1, "": 2}
        return [self.mark(n) + n for n in
                sorted(self.members, key=lambda n: (order[self.mark(n)], n.casefold()))]

    def has_member(self, nick: str) -> bool:
        folded = fold(nick)
        return any(fold(n) == folded for n in self.members)

    def remove_member(self, nick: str) -> bool:
        folded = fold(nick)
        kept = [n for n in self.members if fold(n) != folded]
        changed = len(kept) != len(self.members)
        self.members = kept
        self.ops.discard(folded)
        self.voiced.discard(folded)
        return changed

    def rename_member(self, old: str, new: str) -> bool:
        folded = fold(old)
        changed = False
        for i, n in enumerate(self.members):
            if fold(n) == folded:
                self.members[i] = new
                changed = True
        for marks in (self.ops, self.voiced):
            if folded in marks:
                marks.discard(folded)
                marks.add(fold(new))
        return changed

    def topic_text(self) -> str:
        """The topic bar: the topic and who set it, or why there is none."""
        if not self.is_room:
            return f"private conversation with {self.name}"
        if not self.joined:
            return "(not joined)"
        if not self.topic:
            return "(no topic)"
        by = f" (set by {self.topic_by})" if self.topic_by else ""
        return f"{self.topic}{by}"

    def __repr__(self) -> str:
        return f"<Conversation {self.label()} joined={self.joined}>"


class ConversationModel:
    """Conversations, members, lines and connection state of one chat session.

    ``nick`` is the nick the server knows us by (a guest nick until it
    confirms ours); ``wanted_nick`` is the one to ask for on every
    (re)connect: the ``--nick`` option, then the last nick the server
    confirmed. ``conversations`` holds the rooms (joined, or to be joined
    again after a drop) and the private peers, in the order they came;
    ``shown`` is the key of the one the window shows (None: no room, the
    lines go to a server buffer). ``room`` is the shown room's name.
    """

    def __init__(self, nick: Optional[str] = None, clock: Callable[[], float] = time.time,
                 tz=None, max_lines: int = 5000):
        self.clock = clock
        self.tz = tz
        self.max_lines = max_lines
        self.wanted_nick = nick
        self.nick = nick
        self.conversations: Dict[str, Conversation] = {}
        self.shown: Optional[str] = None
        self.server_lines: List[Line] = []  # lines while no conversation exists
        self.server: Optional[str] = None
        self.state = DISCONNECTED
        self.error: Optional[str] = None  # last connection problem, for the status bar
        self.retry_at: Optional[float] = None
        self.focused = True
        self.unread = 0
        self.login_name: Optional[str] = None  # the account to log in to, if any
        self.login_state: Optional[str] = None
        self.requested = set()  # folded rooms the user asked to join: shown once joined
        self._subscribers = []
        self._shown_ids = set()  # ids of messages shown, to skip replayed duplicates
        self._pending_keys: Dict[str, str] = {}  # folded room -> the key typed with /join

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, callback: Callable[[str, object], None]) -> None:
        self._subscribers.append(callback)

    def _emit(self, change: str, value=None) -> None:
        for callback in list(self._subscribers):
            callback(change, value)

    # -- conversations -------------------------------------------------------

    @property
    def current(self) -> Optional[Conversation]:
        """The shown conversation, or None."""
        return self.conversations.get(self.shown) if self.shown else None

    @property
    def room(self) -> Optional[str]:
        """The shown room's name (None when a private conversation or nothing is shown)."""
        conv = self.current
        return conv.name if conv is not None and conv.is_room else None

    @room.setter
    def room(self, name: Optional[str]) -> None:
        # ``--room NAME``: a room to join on connect, shown.
        if name:
            self.add_room(name)

    @property
    def lines(self) -> List[Line]:
        conv = self.current
        return conv.lines if conv is not None else self.server_lines

    @property
    def members(self) -> List[str]:
        conv = self.current
        return list(conv.members) if conv is not None and conv.is_room else []

    def marked_members(self) -> List[str]:
        conv = self.current
        return conv.marked_members() if conv is not None and conv.is_room else []

    def topic_text(self) -> str:
        conv = self.current
        return conv.topic_text() if conv is not None else ""

    def listing(self) -> List[Conversation]:
        """The list's entries: rooms in the order joined, then private peers."""
        convs = list(self.conversations.values())
        return [c for c in convs if c.is_room] + [c for c in convs if not c.is_room]

    def rooms(self) -> List[Conversation]:
        return [c for c in self.conversations.values() if c.is_room]

    def find_room(self, name) -> Optional[Conversation]:
        if not isinstance(name, str) or not name:
            return None
        return self.conversations.get(conversation_key(ROOM, name.lstrip("#")))

    def find_query(self, nick) -> Optional[Conversation]:
        if not isinstance(nick, str) or not nick:
            return None
        return self.conversations.get(conversation_key(QUERY, nick))

    def _conversation(self, kind: str, name: str) -> Conversation:
        key = conversation_key(kind, name)
        conv = self.conversations.get(key)
        if conv is None:
            conv = self.conversations[key] = Conversation(kind, name)
            if self.shown is None:
                # The first conversation takes over what was said before it
                # (the welcome's message of the day, say).
                conv.lines, self.server_lines = self.server_lines, []
                self.shown = key
                self._shown_changed()
            self._emit(CONVERSATIONS_CHANGED, self.listing())
        return conv

    def add_room(self, name: str, key: Optional[str] = None) -> Conversation:
        """A room to join (``--room``): listed, and shown if nothing else is."""
        conv = self._conversation(ROOM, name.lstrip("#"))
        if key is not None:
            conv.join_key = key
        return conv

    def request_join(self, name: str, key: Optional[str] = None) -> None:
        """The user typed ``/join``: show that room once the server says we are in it."""
        folded = fold(name.lstrip("#"))
        self.requested.add(folded)
        conv = self.conversations.get("#" + folded)
        if conv is not None and key is not None:
            conv.join_key = key
        elif key is not None:
            self._pending_keys[folded] = key

    def select(self, key: Optional[str]) -> None:
        """Show the conversation ``key``; its unread count and mention mark are cleared."""
        conv = self.conversations.get(key) if key else None
        if conv is None:
            return
        changed = key != self.shown
        self.shown = key
        if conv.unread or conv.mention:
            conv.unread, conv.mention = 0, False
            changed = True
        if changed:
            self._shown_changed()
            self._emit(CONVERSATIONS_CHANGED, self.listing())

    def select_relative(self, step: int) -> None:
        """Show the next (``step`` 1) or previous (-1) entry of the list, wrapping round."""
        entries = self.listing()
        if not entries:
            return
        keys = [c.key for c in entries]
        i = keys.index(self.shown) if self.shown in keys else -step
        self.select(keys[(i + step) % len(keys)])

    def close(self, key: str) -> None:
        """Drop a conversation from the list (a room we are no longer in, a peer)."""
        keys = [c.key for c in self.listing()]
        if key not in keys:
            return
        index = keys.index(key)
        del self.conversations[key]
        if key == self.shown:
            # Show the entry that takes its place in the list (or the one before it).
            self.shown = None
            rest = self.listing()
            if rest:
                self.select(rest[min(index, len(rest) - 1)].key)
            else:
                self._shown_changed()
        self._emit(CONVERSATIONS_CHANGED, self.listing())

    def _shown_changed(self) -> None:
        self._emit(ROOM_CHANGED, self.room)
        self._emit(MEMBERS_CHANGED, self.members)
        self._emit(TOPIC_CHANGED, self.topic_text())
        self._emit(STATUS_CHANGED, self.status_text())
        self._emit(TITLE_CHANGED, self.title())

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
        """The window title: shown room (or peer), nick, and the unread count while unfocused."""
        parts = []
        conv = self.current
        if conv is not None:
            parts.append(f"#{conv.name}" if conv.is_room else f"*{conv.name}*")
        if self.nick:
            parts.append(self.nick)
        parts.append(APP_NAME)
        title = " — ".join(parts)
        if self.unread and not self.focused:
            title = f"({self.unread}) {title}"
        return title

    def is_me(self, nick) -> bool:
        return isinstance(nick, str) and self.nick is not None and fold(nick) == fold(self.nick)

    def mentions_me(self, text: str) -> bool:
        """Whether ``text`` names the user's nick as a word (any case)."""
        if not self.nick or not text:
            return False
        pattern = r"(?<![\w-])" + re.escape(fold(self.nick)) + r"(?![\w-])"
        return re.search(pattern, fold(text)) is not None

    # -- lines ---------------------------------------------------------------

    def add_line(self, kind: str, who: str, text: str, ts=None, history=False, id=None,
                 conv: Optional[Conversation] = None) -> Line:
        """A line in ``conv`` (default: the shown conversation, or the server buffer)."""
        if conv is None:
            conv = self.current
        lines = conv.lines if conv is not None else self.server_lines
        line = Line(stamp_of(ts, self.clock(), self.tz), kind, who, text, history, id)
        lines.append(line)
        if len(lines) > self.max_lines:
            del lines[: len(lines) - self.max_lines]
        if conv is None or conv.key == self.shown:
            self._emit(LINE_ADDED, line)
        return line

    def system(self, text: str, ts=None, conv: Optional[Conversation] = None) -> Line:
        return self.add_line(SYSTEM, "--", text, ts, conv=conv)

    def problem(self, text: str, conv: Optional[Conversation] = None) -> Line:
        return self.add_line(ERROR, "!!", text, conv=conv)

    def _count(self, conv: Conversation, ev, mention: bool) -> None:
        """A live message from somebody else in ``conv``: unread counts and the mention mark."""
        if ev.get("history"):
            return
        if not self.focused:
            self.unread += 1
            self._emit(TITLE_CHANGED, self.title())
        if conv.key != self.shown:
            conv.unread += 1
            conv.mention = conv.mention or mention
            self._emit(CONVERSATIONS_CHANGED, self.listing())

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
        """The rooms stay listed (to be joined again), empty, each told of the drop."""
        was = self.state
        self.error = reason
        for conv in self.rooms():
            conv.joined = False
            conv.members = []
            conv.ops.clear()
            conv.voiced.clear()
            if was == CONNECTED:
                self.problem(f"disconnected: {reason}", conv=conv)
        if was == CONNECTED and (self.current is None or not self.current.is_room):
            self.problem(f"disconnected: {reason}")
        self._emit(MEMBERS_CHANGED, [])
        self._emit(TOPIC_CHANGED, self.topic_text())
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

    def _members_changed(self, conv: Conversation) -> None:
        if conv.key == self.shown:
            self._emit(MEMBERS_CHANGED, list(conv.members))

    def _joined_room(self, name) -> Optional[Conversation]:
        conv = self.find_room(name)
        return conv if conv is not None and conv.joined else None

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
        if not room:
            return
        if self.is_me(nick):
            conv = self._conversation(ROOM, room)
            conv.name = room  # the server's spelling
            conv.joined = True
            conv.members = [self.nick]
            conv.ops.clear()
            conv.voiced.clear()
            key = self._pending_keys.pop(fold(room), None)
            if key is not None:
                conv.join_key = key
            self.system(f"you joined {room}", ts, conv=conv)
            if fold(room) in self.requested:
                self.requested.discard(fold(room))
                self.select(conv.key)
            elif conv.key == self.shown:
                self._shown_changed()
            self._emit(CONVERSATIONS_CHANGED, self.listing())
            return
        conv = self._joined_room(room)
        if conv is None:
            return
        if not conv.has_member(nick):
            conv.members.append(nick)
            self._members_changed(conv)
        self.system(f"{nick} joined {room}", ts, conv=conv)

    def _left(self, conv: Conversation, text: str, ts=None, kind=SYSTEM) -> None:
        # The user is out of ``conv``: it leaves the list; the line goes to what is shown next.
        self.requested.discard(fold(conv.name))
        self.close(conv.key)
        self.add_line(kind, "--" if kind == SYSTEM else "!!", text, ts)

    def _on_part(self, ev):
        room, nick, ts = _str(ev.get("room")), _str(ev.get("nick")), ev.get("ts")
        reason = _str(ev.get("reason"))
        why = f" ({reason})" if reason else ""
        conv = self.find_room(room)
        if self.is_me(nick):
            if conv is not None:
                self._left(conv, f"you left {room}{why}", ts)
            return
        if conv is None or not conv.joined:
            return
        if conv.remove_member(nick):
            self._members_changed(conv)
        self.system(f"{nick} left {room}{why}", ts, conv=conv)

    def _on_quit(self, ev):
        # User-scoped: once for all the rooms we share with the quitter.
        nick, ts, reason = _str(ev.get("nick")), ev.get("ts"), _str(ev.get("reason"))
        if not nick:
            return
        why = f" ({reason})" if reason else ""
        for conv in self.rooms():
            if conv.joined and conv.remove_member(nick):
                self._members_changed(conv)
                self.system(f"{nick} quit{why}", ts, conv=conv)
        query = self.find_query(nick)
        if query is not None:
            self.system(f"{nick} quit{why}", ts, conv=query)

    def _on_kick(self, ev):
        room, nick, ts = _str(ev.get("room")), _str(ev.get("nick")), ev.get("ts")
        by, reason = _str(ev.get("by"), "?"), _str(ev.get("reason"))
        why = f" ({reason})" if reason else ""
        conv = self.find_room(room)
        if conv is None:
            return
        if self.is_me(nick):
            self._left(conv, f"{by} kicked you from {room}{why}", ts, kind=ERROR)
            return
        if conv.remove_member(nick):
            self._members_changed(conv)
        self.system(f"{by} kicked {nick} from {room}{why}", ts, conv=conv)

    def _on_nick(self, ev):
        old, new, ts = _str(ev.get("old")), _str(ev.get("new")), ev.get("ts")
        if not new:
            return
        me = self.is_me(old)
        text = f"you are now known as {new}" if me else f"{old} is now known as {new}"
        told = False
        for conv in self.rooms():
            if conv.joined and conv.rename_member(old, new):
                self._members_changed(conv)
                self.system(text, ts, conv=conv)
                told = told or conv.key == self.shown
        query = self.find_query(old)
        if query is not None and not me:
            self._rename_query(query, new)
            self.system(text, ts, conv=query)
            told = told or query.key == self.shown
        if me:
            if not _GUEST.match(new):
                # A guest nick is the server's choice (after a nick-taken, or
                # when a login took our name), never the one to ask for again.
                self.wanted_nick = new
            self._set_nick(new)
            if self.login_state == LOGIN_PENDING and fold(new) == fold(self.login_name or ""):
                self.set_login_state(LOGGED_IN)
        if not told and (me or self.current is None):
            self.system(text, ts)

    def _rename_query(self, conv: Conversation, new: str) -> None:
        old_key = conv.key
        conv.name, conv.key = new, conversation_key(QUERY, new)
        if conv.key in self.conversations and conv.key != old_key:
            return  # a conversation with the new nick exists already: keep both
        self.conversations = {(conv.key if k == old_key else k): c
                              for k, c in self.conversations.items()}
        if self.shown == old_key:
            self.shown = conv.key
            self._shown_changed()
        self._emit(CONVERSATIONS_CHANGED, self.listing())

    def _on_names(self, ev):
        room = _str(ev.get("room"))
        nicks = [n for n in ev.get("nicks") or () if isinstance(n, str)]
        ops = {fold(n) for n in ev.get("ops") or () if isinstance(n, str)}
        voiced = {fold(n) for n in ev.get("voiced") or () if isinstance(n, str)}
        conv = self._joined_room(room)
        if conv is not None:
            conv.members, conv.ops, conv.voiced = nicks, ops, voiced
            self._members_changed(conv)
            shown = conv.marked_members()
        else:
            probe = Conversation(ROOM, room)
            probe.members, probe.ops, probe.voiced = nicks, ops, voiced
            shown = probe.marked_members()
        self.system(f"in {room}: {', '.join(shown) if shown else '(nobody)'}", conv=conv)

    def _on_topic(self, ev):
        room, topic, by = _str(ev.get("room")), _str(ev.get("topic")), _str(ev.get("by"))
        conv = self._joined_room(room)
        if conv is None:
            # The answer to /topic ROOM of a room we are not in.
            self.system(f"topic of {room}: {topic or '(none)'}")
            return
        conv.topic, conv.topic_by = topic, by
        conv.topic_stamp = stamp_of(ev.get("ts"), self.clock(), self.tz)
        if topic:
            self.system(f"topic: {topic}" + (f" (set by {by})" if by else ""), ev.get("ts"),
                        conv=conv)
        else:
            self.system("no topic" + (f" (cleared by {by})" if by else ""), ev.get("ts"),
                        conv=conv)
        if conv.key == self.shown:
            self._emit(TOPIC_CHANGED, self.topic_text())

    def _on_mode(self, ev):
        room, by, mode = _str(ev.get("room")), _str(ev.get("by"), "?"), _str(ev.get("mode"))
        on, nick = bool(ev.get("on")), _str(ev.get("nick"))
        conv = self._joined_room(room)
        if conv is None or not mode:
            return
        if mode in ("op", "voice") and nick:
            marks = conv.ops if mode == "op" else conv.voiced
            (marks.add if on else marks.discard)(fold(nick))
            self._members_changed(conv)
            what = "operator" if mode == "op" else "voice"
            text = f"{by} gives {what} to {nick}" if on else f"{by} takes {what} from {nick}"
        elif mode == "ban" and nick:
            text = f"{by} bans {nick}" if on else f"{by} lifts the ban on {nick}"
        elif mode == "key":
            text = f"{by} sets a key" if on else f"{by} removes the key"
        elif mode == "limit":
            value = ev.get("value")
            text = f"{by} sets limit {value}" if on and value is not None else f"{by} sets limit off"
        else:
            text = f"{by} sets {mode} {'on' if on else 'off'}"
        self.system(text, ev.get("ts"), conv=conv)

    def _on_invite(self, ev):
        room, by = _str(ev.get("room")), _str(ev.get("by"), "?")
        self.system(f"{by} invites you to {room}: type /join {room}", ev.get("ts"))

    def _on_flags(self, ev):
        room = _str(ev.get("room"))
        parts = []
        for flag in ("topic-lock", "moderated", "invite-only", "key", "limit"):
            value = ev.get(flag)
            if value is True:
                value = "on"
            elif value in (False, None):
                value = "off"
            parts.append(f"{flag} {value}")
        self.system(f"flags of {room}: {', '.join(parts)}", conv=self._joined_room(room))

    def _on_bans(self, ev):
        room = _str(ev.get("room"))
        bans = [b for b in ev.get("bans") or () if isinstance(b, dict)]
        listing = ", ".join(_str(b.get("entry")) + (f" ({_str(b.get('nick'))})"
                                                    if b.get("nick") else "") for b in bans)
        self.system(f"bans of {room}: {listing or '(none)'}", conv=self._joined_room(room))

    def _on_presence(self, ev):
        # A batched join/part summary for big rooms: members only, no lines.
        conv = self._joined_room(_str(ev.get("room")))
        if conv is None:
            return
        # Sets, not a search per nick: these rooms are the big ones.
        left = {fold(n) for n in ev.get("left") or () if isinstance(n, str)}
        members = [n for n in conv.members if fold(n) not in left]
        present = {fold(n) for n in members}
        for nick in ev.get("joined") or ():
            if isinstance(nick, str) and fold(nick) not in present:
                members.append(nick)
                present.add(fold(nick))
        conv.members = members
        conv.ops -= left
        conv.voiced -= left
        self._members_changed(conv)

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
            self._shown_ids = {line.id for conv in self.conversations.values()
                               for line in conv.lines if line.id is not None}
        return False

    def _on_message(self, ev):
        if self._replayed(ev):
            return
        nick, text, ts = _str(ev.get("nick")), _str(ev.get("text")), ev.get("ts")
        room = _str(ev.get("room"))
        conv = self.find_room(room)
        history = bool(ev.get("history"))
        if conv is not None and history:
            conv.history_shown += 1
        mine = self.is_me(nick)
        if ev.get("action"):
            self.add_line(ACTION, f"* {nick}", text, ts, history, ev.get("id"), conv=conv)
        else:
            self.add_line(OWN if mine else OTHER, f"<{nick}>", text, ts, history, ev.get("id"),
                          conv=conv)
        if not mine and conv is not None:
            self._count(conv, ev, self.mentions_me(text))

    def _on_history_end(self, ev):
        # The server's replay is over: a separator between it and what is new,
        # unless the replay showed nothing new (after a reconnect, say).
        room = _str(ev.get("room"))
        conv = self.find_room(room)
        shown = 0
        if conv is not None:
            shown, conv.history_shown = conv.history_shown, 0
        if shown:
            self.add_line(SEPARATOR, "", "new messages", conv=conv)
        elif ev.get("count") == 0:
            self.system(f"no earlier messages in #{room}", conv=conv)

    def _on_private(self, ev):
        if self._replayed(ev):
            return
        sender, to, text = _str(ev.get("from")), _str(ev.get("to")), _str(ev.get("text"))
        history = bool(ev.get("history"))
        outgoing = self.is_me(sender) and not self.is_me(to)
        peer = to if outgoing else sender
        if not peer:
            return
        conv = self._conversation(QUERY, peer)
        if outgoing:
            self.add_line(PRIVATE, f"-> *{to}*", text, ev.get("ts"), history, ev.get("id"),
                          conv=conv)
            if conv.key != self.shown and not history:
                # Sent from a room: say so where it was typed too.
                self.add_line(PRIVATE, f"-> *{to}*", text, ev.get("ts"))
        else:
            self.add_line(PRIVATE, f"*{sender}*", text, ev.get("ts"), history, ev.get("id"),
                          conv=conv)
            self._count(conv, ev, True)

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
