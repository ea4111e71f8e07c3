"""Message history: the store interface the hub calls, and its SQLite store.

* :mod:`.interface` -- :class:`IHistoryStore` and :class:`IRoomStore`, what
  the hub may ask;
* :mod:`.sqlite` -- :class:`SQLiteHistory`, group commit off the reactor thread;
* :mod:`.schema` -- the versioned schema (``schema/vN.sql``) and start-up checks.
"""

from .interface import (HistoryError, IHistoryStore, IRoomStore, RoomRecord, StoredMessage,
                        default_room, is_default, private_message, room_message)

HISTORY_CAP = 500  # most messages one replay or /history may return

__all__ = ["HISTORY_CAP", "HistoryError", "IHistoryStore", "IRoomStore", "RoomRecord",
           "StoredMessage", "default_room", "is_default", "private_message", "room_message"]
