"""Replay on join from memory: each room's last messages, shared by every joiner.

Every joiner of a room is replayed the room's last N messages (``--history``).
Read from the store and turned into events joiner by joiner, that is N rows
read, N events built and N renderings made per joiner: 10,000 people joining
a room with history made 500,000 of each, and the rows and events waiting
for their turn were most of the server's peak memory (docs/performance.rst,
"Memory per connection"). :class:`RecentMessages` keeps, per room, the last
N messages as they go out, and the replay events built from them, so that
every joiner gets the same :class:`~twisted_chat.events.Event` objects, each
rendered once per mode.

How a room's list becomes complete. Nothing is known of a room's history
until the store is read once: the hub reads it as before for the first joiner
(:meth:`RecentMessages.fetching` before the read, :meth:`fetched` with its
rows), and from the moment of that read every message that goes out to the
room is added (:meth:`said`, called in output order). The read returns the
room's last N messages up to the last one that had gone out when it was
asked for; what went out since was added meanwhile; together they are the
room's last N messages, and from then on :meth:`replay` answers without the
store. A message goes out only after it is stored, so the list never holds
one the store does not.

With ``--history-days``, ``max_age`` (seconds) keeps a replay from showing
what the store prunes: older messages are dropped from the list as it is
replayed. The hub calls :meth:`forget` when a room is gone, so a server's
memory for this is N messages per room that exists (about 250 bytes a message, plus its
replay event, about 1 KB with both renderings, once somebody has joined).
"""

import time
from collections import deque
from typing import Callable, Dict, List, Optional

from .events import Event


def history_event(room_name: str, msg_id: int, t: float, nick: str, text: str,
                  action: bool) -> Event:
    """A message as replayed: ``history: true``, stamped with its own time."""
    fields = {"id": msg_id, "ts": None, "room": room_name, "nick": nick, "text": text}
    if action:
        fields["action"] = True
    fields["history"] = True
    return Event.timed("message", t, **fields)


class _Recent:
    """One room's last messages: (id, t, nick, text, action), oldest first."""

    __slots__ = ("name", "rows", "events", "complete")

    def __init__(self, name: str, limit: int):
        self.name = name
        self.rows = deque(maxlen=limit)
        self.events: Optional[List[Event]] = None  # built on the first replay
        self.complete = False  # holds the room's last messages (see the module doc)

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        self.events = None

    def replay(self) -> List[Event]:
        if self.events is None:
            self.events = [history_event(self.name, *row) for row in self.rows]
        return self.events


class RecentMessages:
    """The last ``limit`` messages of each room, kept for replays on join."""

    def __init__(self, limit: int, max_age: Optional[float] = None,
                 clock: Callable[[], float] = time.time):
        self.limit = limit
        self.max_age = max_age  # seconds; older messages are not replayed
        self.clock = clock
        self._rooms: Dict[str, _Recent] = {}  # by folded room key

    def _entry(self, room) -> Optional[_Recent]:
        entry = self._rooms.get(room.key)
        if entry is not None and entry.name != room.name:
            # The room was re-created under another spelling: start afresh.
            del self._rooms[room.key]
            entry = None
        return entry

    def replay(self, room) -> Optional[List[Event]]:
        """The room's replay (events shared by every caller; do not change
        them), or None while it is not known without reading the store."""
        entry = self._entry(room)
        if entry is None or not entry.complete:
            return None
        if self.max_age is not None:
            rows, cutoff = entry.rows, self.clock() - self.max_age
            if rows and rows[0][1] < cutoff:
                while rows and rows[0][1] < cutoff:
                    rows.popleft()
                entry.events = None
        return entry.replay()

    def fetching(self, room) -> bool:
        """A replay of the room's last ``limit`` messages is about to be read
        from the store; from now on messages going out to it are kept. True
        if its rows should then be handed to :meth:`fetched`."""
        if not self.limit:
            return False
        entry = self._entry(room)
        if entry is None:
            entry = self._rooms[room.key] = _Recent(room.name, self.limit)
        return not entry.complete

    def fetched(self, room, rows) -> None:
        """The rows (``StoredMessage``, oldest first) of a read announced by
        :meth:`fetching`: the room's last ``limit`` messages up to the last
        one that had gone out when the read was asked for."""
        entry = self._entry(room)
        if entry is None or entry.complete:
            return
        newest = rows[-1].id if rows else 0
        # Kept since the read was asked for (or since an earlier read still
        # unanswered, which is why some may be in the rows too).
        later = [row for row in entry.rows if row[0] > newest]
        entry.rows.clear()
        entry.rows.extend((r.id, r.t, r.nick, r.text, r.action) for r in rows)
        entry.rows.extend(later)
        entry.events = None
        entry.complete = True

    def said(self, room, msg_id: int, t: float, nick: str, text: str,
             action: bool = False) -> None:
        """A message went out to ``room`` (called in output order)."""
        entry = self._rooms.get(room.key)
        if entry is not None:
            entry.add((msg_id, t, nick, text, action))

    def event(self, room, row) -> Event:
        """The replay event of a row read from the store: the room's shared
        one when it is among the kept messages, else a new one."""
        entry = self._entry(room)
        if entry is not None and entry.complete and entry.rows:
            first = entry.rows[0][0]
            if row.id >= first:
                for kept, event in zip(entry.rows, entry.replay()):
                    if kept[0] == row.id:
                        return event
        return history_event(room.name, row.id, row.t, row.nick, row.text, row.action)

    def forget(self, room) -> None:
        """The room is gone: its messages stay in the store only."""
        self._rooms.pop(room.key, None)
