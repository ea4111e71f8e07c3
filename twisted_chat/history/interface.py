"""What the hub may ask of a history store, and the values it gets back.

The hub calls a store only through :class:`IHistoryStore`; it never sees SQL.
A record handed to ``append`` is a plain dict built by the hub::

    {"kind": "message", "room": <folded key>, "room_name": <display name>,
     "nick": ..., "text": ..., "t": <float seconds>, "action": bool}
    {"kind": "private", "from": ..., "to": ..., "text": ..., "t": ..., "action": False}
"""

from typing import Callable, NamedTuple, Optional

from zope.interface import Interface


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


class IHistoryStore(Interface):
    """Durable (or not) storage of chat messages."""

    def append(record: dict, done: Callable[[int], None],
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
