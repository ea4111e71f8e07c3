"""``twisted-chat-admin``: an operator's commands on a server's files.

::

    twisted-chat-admin backup chat.sqlite /backups/chat-2026-12-02.sqlite
    twisted-chat-admin rooms chat.sqlite
    twisted-chat-admin accounts accounts.passwd
    twisted-chat-admin topic chat.sqlite dev "Release on Friday"
    twisted-chat-admin ops chat.sqlite dev --add alice --remove bob

``backup`` copies the history database with SQLite's online backup API while
the server runs and writes: the copy is one consistent snapshot (a read
transaction; in WAL mode the server's writer goes on beside it), so it holds
every message acknowledged before the backup started. The copy is written
beside DEST under a temporary name, switched out of WAL mode (one
self-contained file), checked with ``PRAGMA integrity_check`` and only then
renamed to DEST. ``rooms`` and ``accounts`` only read.

``topic`` and ``ops`` change a room's lasting state (protocol v2: what the
server loads at start) while no server runs: they take the database's lock
(:mod:`twisted_chat.history.lock`), which a running server holds, so they
refuse while one does, and a server cannot start while they write. The
change is saved by the writer's own :func:`~twisted_chat.history.writer.save_room`,
as the server saves it.

Errors are one line on standard error and exit status 1 (2 for bad usage),
never a traceback: a missing or foreign file, a database locked by another
program for longer than ``--timeout``, a DEST that exists.
"""

import argparse
import datetime
import os
import sqlite3
import sys
import tempfile
import time

from . import passwords
from .commands import fold, valid_nick, valid_room
from .errors import ChatError
from .history import HistoryError, lock, schema, writer
from .history.interface import RoomRecord, default_room

PROG = "twisted-chat-admin"
DEFAULT_TIMEOUT = 5.0


class AdminError(Exception):
    """What went wrong, for a person; the command exits 1 with it."""


def _uri(path: str, mode: str) -> str:
    from urllib.parse import quote

    return f"file:{quote(os.path.abspath(path))}?mode={mode}"


def open_database(path: str, timeout: float) -> sqlite3.Connection:
    """An existing twisted-chat history database, opened without creating,
    upgrading or writing anything."""
    if not os.path.exists(path):
        raise AdminError(f"{path} does not exist")
    if not os.path.isfile(path):
        raise AdminError(f"{path} is not a file")
    try:
        # mode=rw, not ro: a reader of a WAL database needs its -shm file,
        # which a read-only connection could not create if the server is not
        # running. Nothing here writes.
        conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise AdminError(f"cannot open {path}: {_why(e)}") from None
    try:
        version = schema.version_of(conn)
    except sqlite3.Error as e:
        conn.close()
        raise AdminError(f"cannot read {path}: {_why(e)}") from None
    except HistoryError as e:  # tables, but not ours
        conn.close()
        raise AdminError(f"{path}: {e}") from None
    if version == 0:
        conn.close()
        raise AdminError(f"{path} is not a twisted-chat history database (it is empty)")
    if version > schema.LATEST:
        conn.close()
        raise AdminError(f"{path} was written by a newer twisted-chat (schema version "
                         f"{version}; this one knows up to {schema.LATEST})")
    return conn


def _why(error: sqlite3.Error) -> str:
    message = str(error)
    if "locked" in message or "busy" in message:
        return (f"the database is locked by another program ({message}); try again, "
                f"or give --timeout more seconds")
    if "not a database" in message or "malformed" in message:
        return f"it is corrupt or not an SQLite database ({message})"
    return message


# -- backup -------------------------------------------------------------------

def backup(source: str, dest: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Copy the database ``source`` to ``dest`` (which must not exist);
    return the number of messages in the copy."""
    if os.path.exists(dest):
        raise AdminError(f"{dest} exists; give a new file name (nothing was written)")
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise AdminError(f"the directory {directory} does not exist")
    src = open_database(source, timeout)
    fd, partial = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".partial",
                                   dir=directory)
    os.close(fd)
    try:
        try:
            dst = sqlite3.connect(partial, isolation_level=None)
            try:
                src.backup(dst)  # one step: one read transaction, one snapshot
                dst.execute("PRAGMA journal_mode = DELETE").fetchone()
                problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise AdminError(f"the copy fails its integrity check: "
                                     f"{'; '.join(problems[:5])}")
                count = dst.execute("SELECT count(*) FROM messages").fetchone()[0]
            finally:
                dst.close()
        except sqlite3.Error as e:
            raise AdminError(f"cannot back up {source}: {_why(e)}") from None
        finally:
            src.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        if os.path.exists(dest):
            raise AdminError(f"{dest} appeared meanwhile; the backup was not kept")
        os.replace(partial, dest)
        partial = None
        _fsync_directory(directory)
        return count
    finally:
        if partial is not None:
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.unlink(partial + suffix)
                except FileNotFoundError:
                    pass


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- listings -----------------------------------------------------------------

def rooms(path: str, timeout: float = DEFAULT_TIMEOUT):
    """Every room with messages or a kept state, by folded name:
    [(name, messages, last message time or None, RoomRecord or None)]."""
    conn = open_database(path, timeout)
    try:
        found = {}
        for key, name, count, t in conn.execute(
                "SELECT room, (SELECT room_name FROM messages AS n WHERE n.room = m.room"
                "              ORDER BY id DESC LIMIT 1),"
                " count(*), max(t) FROM messages AS m WHERE room IS NOT NULL"
                " GROUP BY room"):
            found[key] = [name, count, t, None]
        if schema.version_of(conn) >= 2:
            for key, record in _load_rooms(conn).items():
                found.setdefault(key, [record.name, 0, None, None])
                found[key][0] = record.name
                found[key][3] = record
        return [tuple(found[key]) for key in sorted(found)]
    except sqlite3.Error as e:
        raise AdminError(f"cannot read {path}: {_why(e)}") from None
    finally:
        conn.close()


def _load_rooms(conn, key=None):
    """{folded key: RoomRecord} of the kept rooms (only ``key``'s, if given),
    read as the store reads them."""
    where, args = ("", ()) if key is None else (" WHERE room = ?", (key,))
    ops, bans = {}, {}
    for room, account in conn.execute(
            f"SELECT room, account FROM room_ops{where} ORDER BY room, account", args):
        ops.setdefault(room, []).append(account)
    for room, *ban in conn.execute(
            f"SELECT room, entry, nick, by, t FROM room_bans{where} ORDER BY room, position",
            args):
        bans.setdefault(room, []).append(tuple(ban))
    found = {}
    for (room, name, topic, topic_by, topic_t, topic_lock, moderated, invite_only,
         password, limit) in conn.execute(
            "SELECT key, name, topic, topic_by, topic_t, topic_lock, moderated, invite_only,"
            f" password, member_limit FROM rooms{where.replace('room =', 'key =')}", args):
        found[room] = RoomRecord(room, name, topic, topic_by, topic_t, bool(topic_lock),
                                 bool(moderated), bool(invite_only), password, limit,
                                 tuple(ops.get(room, ())), tuple(bans.get(room, ())))
    return found


def _default(conn, key, name) -> RoomRecord:
    """A room with no kept state, under the name its messages were last said
    under (else ``name``)."""
    said = conn.execute("SELECT room_name FROM messages WHERE room = ? ORDER BY id DESC"
                        " LIMIT 1", (key,)).fetchone()
    return default_room(key, said[0] if said else name)


# -- offline changes to a room -----------------------------------------------------

ADMIN_NICK = "twisted-chat-admin"  # who set a topic set here


def change_room(path: str, room: str, change) -> RoomRecord:
    """Apply ``change(record) -> record`` to the kept state of ``room`` in the
    database ``path``, while no server runs; return the record saved."""
    try:
        name = valid_room(room)
    except ChatError as e:
        raise AdminError(f"bad ROOM {room!r}: {e.message}") from None
    if not os.path.isfile(path):
        raise AdminError(f"{path} does not exist")
    try:
        held = lock.acquire(path)
    except lock.DatabaseBusy:
        raise AdminError(
            f"a twisted-chat server is running on {path} (it holds the database): stop it "
            f"first (systemctl stop twisted-chat), or make the change from a chat "
            f"client (/topic, /op)") from None
    except HistoryError as e:
        raise AdminError(f"{path}: {e}") from None
    try:
        try:
            conn = schema.connect(path)  # a version 1 file gets the room tables
        except HistoryError as e:
            raise AdminError(f"cannot use {path}: {e}") from None
        try:
            key = fold(name)
            record = _load_rooms(conn, key).get(key) or _default(conn, key, name)
            record = change(record)
            writer.save_room(conn, tuple(record))
            return _load_rooms(conn, key).get(key) or default_room(key, record.name)
        except sqlite3.Error as e:
            raise AdminError(f"cannot change {path}: {_why(e)}") from None
        finally:
            conn.close()
    finally:
        lock.release(held)  # after the connection: see twisted_chat.history.lock


def set_topic(path: str, room: str, topic: str, by: str = ADMIN_NICK) -> RoomRecord:
    """Set the room's topic (``-`` or an empty one clears it)."""
    if topic.strip() == "-" or not topic.strip():
        return change_room(path, room, lambda r: r._replace(topic="", topic_by=None,
                                                            topic_t=None))
    topic = topic.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in topic):
        raise AdminError("a topic cannot hold control characters (a line break, a tab)")
    return change_room(path, room, lambda r: r._replace(topic=topic, topic_by=by,
                                                        topic_t=time.time()))


def set_ops(path: str, room: str, add=(), remove=()) -> RoomRecord:
    """Make the accounts ``add`` operators of the room and ``remove`` not."""
    try:
        add = {fold(valid_nick(name)) for name in add}
        remove = {fold(valid_nick(name)) for name in remove}
    except ChatError as e:
        raise AdminError(f"bad account name: {e.message}") from None
    if add & remove:
        raise AdminError(f"both added and removed: {', '.join(sorted(add & remove))}")

    def change(record):
        return record._replace(ops=tuple(sorted((set(record.ops) | add) - remove)))

    return change_room(path, room, change)


def room_state(path: str, room: str, timeout: float = DEFAULT_TIMEOUT) -> RoomRecord:
    """The kept state of ``room`` (the default if it has none); only reads."""
    try:
        name = valid_room(room)
    except ChatError as e:
        raise AdminError(f"bad ROOM {room!r}: {e.message}") from None
    conn = open_database(path, timeout)
    try:
        key = fold(name)
        if schema.version_of(conn) < 2:
            return _default(conn, key, name)
        return _load_rooms(conn, key).get(key) or _default(conn, key, name)
    except sqlite3.Error as e:
        raise AdminError(f"cannot read {path}: {_why(e)}") from None
    finally:
        conn.close()


def accounts(path: str):
    """[(name, scrypt parameters)] of an account file, by name."""
    try:
        found = passwords.read_accounts(path)
    except FileNotFoundError:
        raise AdminError(f"{path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AdminError(f"cannot read {path}: {e}") from None
    listed = []
    for key in sorted(found):
        name, encoded = found[key]
        ln, r, p, _, _ = passwords.parse_hash(encoded)
        listed.append((name, f"scrypt ln={ln},r={r},p={p}"))
    return listed


def _when(t) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _table(rows, out) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(str(cell).ljust(width)
                            for cell, width in zip(row, widths)).rstrip() + "\n")


# -- the command ---------------------------------------------------------------

def main(argv=None, out=None) -> int:
    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate a twisted-chat server's files: back up its history "
        "database while it runs, list its rooms and accounts, set a room's topic and "
        "operators while it is stopped (docs/operations.rst).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_timeout(p):
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="how long to wait for a database another program has locked "
                            f"(default {DEFAULT_TIMEOUT:g})")
        return p

    p = with_timeout(commands.add_parser(
        "backup", help="copy the history database, even while the server runs",
        description="Copy the history database DB to DEST (a new file) with SQLite's online "
                    "backup API: a consistent snapshot, taken while the server goes on "
                    "writing; checked with PRAGMA integrity_check before it is kept."))
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p.add_argument("dest", metavar="DEST", help="the backup file to create")
    p = with_timeout(commands.add_parser(
        "rooms", help="list the rooms of the history database",
        description="List the rooms that have messages in DB: name, messages kept, "
                    "the time of the last one."))
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p = commands.add_parser(
        "accounts", help="list the accounts of an account file",
        description="List the accounts of FILE (as made by twisted-chat-passwd): names and "
                    "hash parameters, never the hashes.")
    p.add_argument("file", metavar="FILE", help="the account file (--auth chat-passwd:FILE)")
    p = commands.add_parser(
        "topic", help="set a room's topic while the server is stopped",
        description="Set the topic of ROOM in DB (kept, and loaded when the server starts). "
                    "Refused while a server runs on DB.")
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("topic", metavar="TEXT", help='the topic; "-" clears it')
    p.add_argument("--by", default=ADMIN_NICK, metavar="NICK",
                   help=f"who set it, as clients are told (default {ADMIN_NICK})")
    p = with_timeout(commands.add_parser(
        "ops", help="list or change a room's operators while the server is stopped",
        description="List the operator accounts of ROOM in DB, or change them (kept, and "
                    "loaded when the server starts). Changes are refused while a server "
                    "runs on DB."))
    p.add_argument("db", metavar="DB", help="the server's --db file (chat.sqlite)")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("--add", action="append", default=[], metavar="ACCOUNT",
                   help="make this account an operator (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="ACCOUNT",
                   help="make this account no operator (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.command == "backup":
            count = backup(args.db, args.dest, args.timeout)
            out.write(f"backed up {args.db} to {args.dest}: {count} messages, "
                      f"integrity check ok\n")
        elif args.command == "rooms":
            listed = rooms(args.db, args.timeout)
            if not listed:
                out.write("no rooms with messages or a kept state\n")
            else:
                _table([("ROOM", "MESSAGES", "LAST MESSAGE", "OPERATORS", "TOPIC")]
                       + [(name, count, _when(t),
                           ",".join(record.ops) if record and record.ops else "-",
                           record.topic if record and record.topic else "-")
                          for name, count, t, record in listed], out)
        elif args.command == "topic":
            record = set_topic(args.db, args.room, args.topic, args.by)
            out.write(f"topic of {record.name}: {record.topic or '(none)'}\n")
        elif args.command == "ops":
            if args.add or args.remove:
                record = set_ops(args.db, args.room, args.add, args.remove)
            else:
                record = room_state(args.db, args.room, args.timeout)
            out.write(f"operators of {record.name}: {', '.join(record.ops) or '(none)'}\n")
        elif args.command == "accounts":
            listed = accounts(args.file)
            if not listed:
                out.write("no accounts\n")
            else:
                _table([("NAME", "HASH")] + listed, out)
    except AdminError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
