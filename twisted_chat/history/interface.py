"""What the hub may ask of a history store, and the values it gets back.

The hub calls a store only through :class:`IHistoryStore`; it never sees SQL.
A record handed to ``append`` is a plain tuple of the columns a store keeps,
made by :func:`room_message` or :func:`private_message`::

    (kind, room, room_name, nick, target, text, action, t)

``kind`` is ``"message"`` (``room`` the folded key, ``room_name`` the
display name, ``target`` None) or ``"private"`` (``room`` and ``room_name``
None, ``target`` the recipient); ``nick`` is the sender, ``t`` float seconds
since the epoch. A plain tuple because a busy server holds one per message
until its commit: no dict, nothing more for the garbage collector to walk,
and it crosses to the writer process as it is.
"""

from typing import Callable, NamedTuple, Optional

from zope.interface import Attribute, Interface


def room_message(room: str, room_name: str, nick: str, text: str, t: float,
                 action: bool = False) -> tuple:
    """The record of a message said in a room (``room``: its folded key)."""
    return ("message", room, room_name, nick, None, text, action, t)


def private_message(sender: str, recipient: str, text: str, t: float) -> tuple:
    """The record of a private message."""
    return ("private", None, None, sender, recipient, text, False, t)


TEXT = 5  # where a record keeps its text


class HistoryError(Exception):
    """The history database is unusable; the message says why, for a person."""


class StoredMessage(NamedTuple):
    """One room message as read back from a store."""

    id: int
    t: float
    room: str  # the display name it was said under
    nick: str
    text: str
    action: bool


class RoomRecord(NamedTuple):
    """A room's lasting state: what survives a restart (protocol v2).

    A room whose record equals :func:`default_room` (apart from ``key`` and
    ``name``) is not kept: saving it deletes the stored row.
    """

    key: str  # folded room name
    name: str  # display name
    topic: str = ""
    topic_by: Optional[str] = None  # the nick that set it
    topic_t: Optional[float] = None  # when, seconds since the epoch
    topic_lock: bool = True  # only operators set the topic
    moderated: bool = False  # only operators and voiced members speak
    invite_only: bool = False
    password: Optional[str] = None  # the room key of /join ROOM KEY
    limit: Optional[int] = None  # most members at once
    ops: tuple = ()  # folded account names, sorted
    bans: tuple = ()  # (entry, nick, by, t), in the order they were set


def default_room(key: str, name: str) -> RoomRecord:
    return RoomRecord(key, name)


def is_default(record: RoomRecord) -> bool:
    """Nothing worth keeping: the row can go."""
    return record[2:] == default_room(record.key, record.name)[2:]


class IRoomStore(Interface):
    """Durable (or not) storage of rooms' lasting state."""

    def load_rooms():
        """A Deferred firing with every kept room: a dict of folded key ->
        RoomRecord. Called once, at start."""

    def save_room(record: RoomRecord):
        """Store the room's whole state (replacing what was kept; a default
        record deletes it). A Deferred firing once it is committed; saves
        commit in the order they were asked for. A save that cannot be
        stored fails (its Deferred errbacks with the reason) and leaves what
        was kept; it holds up neither later saves nor messages."""


class IHistoryStore(Interface):
    """Durable (or not) storage of chat messages."""

    last_id_at_start = Attribute(
        "The highest id stored before this run (0 for none), once started: the hub "
        "bounds a replay by it until a message of this run has gone out.")

    def append(record: tuple, done: Callable[[int], None],
               failed: Optional[Callable[[], None]] = None) -> None:
        """Store ``record``; then call ``done(id)`` on the reactor thread.

        ``id`` is the stored message's id. ``done`` callbacks run in the order
        the records were appended, and only once the record is committed
        (for a durable store), so whatever ``done`` does (echo, broadcast)
        happens after the message is safe. If storing fails, ``failed()``
        (when given) is called instead, also in order.
        """

    def recent(room: str, limit: int):
        """A Deferred firing with the newest ``limit`` messages of the room
        whose folded key is ``room``, oldest first (a list of StoredMessage).
        Reads see every record whose ``done`` has run."""

    def before(room: str, before_id: int, limit: int):
        """Like ``recent``, but only messages whose id is below ``before_id``."""

    def page(room: str, limit: int, after_id: Optional[int] = None,
             before_id: Optional[int] = None, after_ms: Optional[int] = None,
             before_ms: Optional[int] = None, newest: bool = True):
        """A Deferred firing with up to ``limit`` messages of the room whose
        folded key is ``room`` strictly between every bound given, oldest
        first: the newest ``limit`` of them if ``newest``, else the oldest.

        Bounds are exclusive: ``after_id < id < before_id`` and, for times,
        ``after_ms < ms < before_ms`` where ``ms`` is the message's time in
        whole milliseconds since the epoch, truncated (``int(t * 1000)``,
        which is what a rendered timestamp shows: a client that pages by the
        ``time`` it was shown neither misses nor repeats a message). Reads
        see every record whose ``done`` has run."""
