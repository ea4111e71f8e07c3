-- twisted-chat history, schema version 1.
-- Each vN.sql upgrades a database from version N-1 to N; the loader runs it
-- in one transaction together with the version bump (see schema.py).

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

-- Room messages and private messages share one id sequence: an id is the
-- row id and increases in acceptance order. AUTOINCREMENT: ids are never
-- reused, even after retention pruning has deleted the newest rows' elders.
CREATE TABLE messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT    NOT NULL,          -- 'message' (a room) or 'private'
    room      TEXT,                      -- folded room key; NULL for private
    room_name TEXT,                      -- the room's display name when said
    nick      TEXT    NOT NULL,          -- the sender
    target    TEXT,                      -- the recipient of a private message
    text      TEXT    NOT NULL,
    action    INTEGER NOT NULL DEFAULT 0, -- 1 for /me
    t         REAL    NOT NULL           -- seconds since the epoch, UTC
);

-- Replay and paging: the newest messages of one room, walked backwards by id.
CREATE INDEX messages_room_id ON messages (room, id) WHERE room IS NOT NULL;
-- Retention pruning by age.
CREATE INDEX messages_t ON messages (t);
