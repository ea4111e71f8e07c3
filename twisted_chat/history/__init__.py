"""Message history: the store interface the hub calls, and its SQLite store.

* :mod:`.interface` -- :class:`IHistoryStore`, what the hub may ask;
* :mod:`.sqlite` -- :class:`SQLiteHistory`, group commit off the reactor thread;
* :mod:`.schema` -- the versioned schema (``schema/vN.sql``) and start-up checks.
"""

from .interface import (HistoryError, IHistoryStore, StoredMessage, private_message,
                        room_message)

HISTORY_CAP = 500  # most messages one replay or /history may return

__all__ = ["HISTORY_CAP", "HistoryError", "IHistoryStore", "StoredMessage",
           "private_message", "room_message"]
