-- twisted-chat history, schema version 2: rooms' lasting state (protocol v2).
-- Upgrades a version 1 database; its messages are not touched.
--
-- A room has a row here only while it has something worth keeping (a topic,
-- a flag off its default, an operator account, a ban): saving a room whose
-- state is the default deletes its rows. A save replaces all of a room's
-- rows (rooms, room_ops, room_bans) in one transaction.

CREATE TABLE rooms (
    key          TEXT    PRIMARY KEY,        -- the case-folded room name
    name         TEXT    NOT NULL,           -- its display name
    topic        TEXT    NOT NULL DEFAULT '',
    topic_by     TEXT,                       -- the nick that set the topic
    topic_t      REAL,                       -- when, seconds since the epoch
    topic_lock   INTEGER NOT NULL DEFAULT 1 CHECK (topic_lock IN (0, 1)),
    moderated    INTEGER NOT NULL DEFAULT 0 CHECK (moderated IN (0, 1)),
    invite_only  INTEGER NOT NULL DEFAULT 0 CHECK (invite_only IN (0, 1)),
    password     TEXT,                       -- the key of /join ROOM KEY
    member_limit INTEGER CHECK (member_limit IS NULL
                                OR (typeof(member_limit) = 'integer' AND member_limit > 0))
);

-- Operators saved by account (folded account names); guests' operator status
-- is never kept.
CREATE TABLE room_ops (
    room    TEXT NOT NULL,                   -- rooms.key
    account TEXT NOT NULL,
    PRIMARY KEY (room, account)
);

-- Bans, in the order they were set (position 0 first).
CREATE TABLE room_bans (
    room     TEXT    NOT NULL,               -- rooms.key
    position INTEGER NOT NULL,
    entry    TEXT    NOT NULL,               -- 'account:NAME' or 'address:IP'
    nick     TEXT,                           -- the nick banned
    by       TEXT,                           -- who banned it
    t        REAL,                           -- when, seconds since the epoch
    PRIMARY KEY (room, position)
);
