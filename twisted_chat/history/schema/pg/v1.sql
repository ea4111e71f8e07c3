-- twisted-chat history on PostgreSQL, schema version 1.
-- Each vN.sql upgrades a database from version N-1 to N; the loader runs it
-- in one transaction together with the version bump, under an advisory lock
-- (see pg.py). Version 1 holds what the SQLite schema's versions 1 and 2 do.

CREATE TABLE schema_version (
    version integer NOT NULL
);

-- The last message id ever given out (one row). A batch takes its ids by
-- raising it in the batch's transaction: ids are consecutive within a batch,
-- increase in commit order (the row stays locked until the commit), and are
-- never reused, even once pruning has deleted the newest rows' elders.
CREATE TABLE message_ids (
    last bigint NOT NULL
);
INSERT INTO message_ids (last) VALUES (0);

-- Room messages and private messages share one id sequence.
CREATE TABLE messages (
    id        bigint           PRIMARY KEY,
    kind      text             NOT NULL,          -- 'message' (a room) or 'private'
    room      text,                               -- folded room key; NULL for private
    room_name text,                               -- the room's display name when said
    nick      text             NOT NULL,          -- the sender
    target    text,                               -- the recipient of a private message
    text      text             NOT NULL,
    action    boolean          NOT NULL DEFAULT false, -- true for /me
    t         double precision NOT NULL           -- seconds since the epoch, UTC
);

-- Replay and paging: the newest messages of one room, walked backwards by id.
CREATE INDEX messages_room_id ON messages (room, id) WHERE room IS NOT NULL;
-- Retention pruning by age.
CREATE INDEX messages_t ON messages (t);

-- Rooms' lasting state (protocol v2). A room has a row only while it has
-- something worth keeping; a save replaces all of a room's rows in one
-- transaction, and saving a default room deletes them.
CREATE TABLE rooms (
    key          text    PRIMARY KEY,        -- the case-folded room name
    name         text    NOT NULL,           -- its display name
    topic        text    NOT NULL DEFAULT '',
    topic_by     text,                       -- the nick that set the topic
    topic_t      double precision,           -- when, seconds since the epoch
    topic_lock   boolean NOT NULL DEFAULT true,
    moderated    boolean NOT NULL DEFAULT false,
    invite_only  boolean NOT NULL DEFAULT false,
    password     text,                       -- the key of /join ROOM KEY
    member_limit integer CHECK (member_limit > 0)
);

-- Operators saved by account (folded account names).
CREATE TABLE room_ops (
    room    text NOT NULL,                   -- rooms.key
    account text NOT NULL,
    PRIMARY KEY (room, account)
);

-- Bans, in the order they were set (position 0 first).
CREATE TABLE room_bans (
    room     text    NOT NULL,               -- rooms.key
    position integer NOT NULL,
    entry    text    NOT NULL,               -- 'account:NAME' or 'address:IP'
    nick     text,                           -- the nick banned
    set_by   text,                           -- who banned it
    t        double precision,               -- when, seconds since the epoch
    PRIMARY KEY (room, position)
);
