"""The SQLite history store and its schema, on real files in a temp dir.

The writer thread is replaced by a runner the test drives by hand, and the
reactor by a Clock, so each step (end of turn, commit, callbacks) is visible.
"""

import os
import shutil
import sqlite3
import sys
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat.history import HistoryError, private_message, room_message, schema
from twisted_chat.history import sqlite as store_module
from twisted_chat.history.sqlite import SQLiteHistory


class ManualRunner:
    """Stands in for the writer thread: jobs run when the test says so."""

    def __init__(self):
        self.jobs = []

    def __call__(self, fn, *args):
        d = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_one(self):
        fn, args, d = self.jobs.pop(0)
        try:
            result = fn(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self):
        while self.jobs:
            self.run_one()


class Unstorable:
    def __len__(self):
        return 3


def message(text, room="lobby", t=1000.0, nick="alice", action=False, name=None):
    return room_message(room, name or room, nick, text, t, action)


class PagingChecks:
    """Store.page, the reads of IRC's CHATHISTORY, on ReadTests' rows (lobby
    i has id 2i - 1 and time i seconds; dev's are in between): both engines
    run these."""

    def test_page_after_an_id_oldest_or_newest_first(self):
        self.assertEqual(self.texts(self.store.page("lobby", 3, after_id=5, newest=False)),
                         ["lobby 4", "lobby 5", "lobby 6"])
        self.assertEqual(self.texts(self.store.page("lobby", 3, after_id=5)),
                         ["lobby 8", "lobby 9", "lobby 10"])

    def test_page_between_ids_excludes_both(self):
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_id=5, before_id=13,
                                                    newest=False)),
                         ["lobby 4", "lobby 5", "lobby 6"])
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_id=13, before_id=5)), [])

    def test_page_by_time_in_truncated_milliseconds(self):
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_ms=3000,
                                                    before_ms=6000)), ["lobby 4", "lobby 5"])
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_ms=2999,
                                                    before_ms=4001)), ["lobby 3", "lobby 4"])
        # 20.0009 s shows as ...:20.000Z: it is at 20000 ms, not after it.
        self.store.append(message("late", t=20.0009), lambda _: None)
        self.clock.advance(0)
        self.runner.run_all()
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_ms=20000)), [])
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_ms=19999)), ["late"])
        self.assertEqual(self.texts(self.store.page("lobby", 1, before_ms=20001)), ["late"])
        self.assertEqual(self.texts(self.store.page("lobby", 1, before_ms=20000)),
                         ["lobby 10"])

    def test_page_mixes_an_id_and_a_time_and_keeps_to_its_room(self):
        self.assertEqual(self.texts(self.store.page("lobby", 10, after_id=5, before_ms=6000,
                                                    newest=False)), ["lobby 4", "lobby 5"])
        self.assertEqual(self.texts(self.store.page("dev", 2, after_id=0, newest=False)),
                         ["dev 1", "dev 2"])
        self.assertEqual(self.texts(self.store.page("nowhere", 10, after_id=0)), [])


class StoreTestCase(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-history-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "chat.sqlite")
        self.clock = Clock()
        self.clock.advance(100_000)

    def open(self, path=None, **kw):
        runner = ManualRunner()
        store = SQLiteHistory(path or self.path, clock=self.clock, runner=runner, **kw)
        store.startService()
        self.addCleanup(self.close, store, runner)
        return store, runner

    def close(self, store, runner):
        if store.running:
            d = store.stopService()
            self.clock.advance(0)
            runner.run_all()
            self.successResultOf(d)

    def read(self, store, runner, d):
        runner.run_all()
        return self.successResultOf(d)


class GroupCommitTests(StoreTestCase):
    def test_a_turn_is_one_transaction_and_done_follows_the_commit(self):
        store, runner = self.open()
        acked = []
        for i in range(3):
            store.append(message(f"m{i}"), acked.append)
        self.assertEqual(runner.jobs, [])  # nothing before the end of the turn
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)  # one write for the whole turn
        self.assertEqual(acked, [])  # nothing acknowledged before the commit
        runner.run_one()
        self.assertEqual(acked, [1, 2, 3])
        # Committed: another connection sees the rows.
        rows = sqlite3.connect(self.path).execute("SELECT id, text FROM messages").fetchall()
        self.assertEqual(rows, [(1, "m0"), (2, "m1"), (3, "m2")])

    def test_batches_around_the_insert_chunk_keep_ids_and_order(self):
        # write_batch inserts CHUNK rows per statement and the rest one by
        # one: every split must give consecutive ids in order.
        from twisted_chat.history.writer import CHUNK

        store, runner = self.open()
        acked, texts = [], []
        for size in (1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7):
            for i in range(size):
                texts.append(f"{size}:{i}")
                store.append(message(texts[-1]), acked.append)
            self.clock.advance(0)
            runner.run_all()
        self.assertEqual(acked, list(range(1, len(texts) + 1)))
        rows = sqlite3.connect(self.path).execute("SELECT id, text FROM messages ORDER BY id")
        self.assertEqual(rows.fetchall(), list(enumerate(texts, 1)))

    def test_texts_survive_the_batch_intact(self):
        store, runner = self.open()
        texts = ["tab\there", "emoji \U0001F600", "nul-free \\ backslash", "x" * 5000,
                 "' OR 1=1; --"]
        for text in texts:
            store.append(message(text, action=True), lambda _: None)
        self.clock.advance(0)
        runner.run_all()
        got = self.read(store, runner, store.recent("lobby", 9))
        self.assertEqual([m.text for m in got], texts)
        self.assertTrue(all(m.action for m in got))

    def test_messages_accumulate_while_a_batch_is_written(self):
        store, runner = self.open()
        acked = []
        store.append(message("first"), lambda i: acked.append(("first", i)))
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        for turn in range(3):  # three more turns while the first write runs
            store.append(message(f"later{turn}"), lambda i, n=turn: acked.append((n, i)))
            self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)  # no second writer
        runner.run_one()
        # The first batch's callback ran, and the next batch went at once.
        self.assertEqual(acked, [("first", 1)])
        self.assertEqual(len(runner.jobs), 1)
        runner.run_one()
        self.assertEqual(acked, [("first", 1), (0, 2), (1, 3), (2, 4)])
        self.assertEqual(runner.jobs, [])

    def test_several_batches_in_flight_answer_in_order_one_failing(self):
        # The writer process is handed the next batches before it has
        # answered the first; callbacks still run in append order, and a
        # failed batch fails its own messages only.
        self.patch(store_module, "MAX_BATCH", 2)
        store, runner = self.open()
        store._max_in_flight = 3
        events = []
        for i in range(7):
            text = Unstorable() if i == 3 else f"m{i}"
            store.append(message(text), lambda n, i=i: events.append((i, n)),
                         lambda i=i: events.append((i, "failed")))
        self.clock.advance(0)
        self.assertEqual([len(job[1][0]) for job in runner.jobs], [2, 2, 2])  # 3 at once
        runner.run_one()
        self.assertEqual(len(runner.jobs), 3)  # an answer lets the last batch go
        runner.run_all()
        self.assertEqual(events, [(0, 1), (1, 2), (2, "failed"), (3, "failed"),
                                  (4, 3), (5, 4), (6, 5)])
        self.assertEqual(self.successResultOf(store.drain()), None)

    def test_a_flood_is_written_in_bounded_batches_in_order(self):
        self.patch(store_module, "MAX_BATCH", 3)
        store, runner = self.open()
        acked = []
        for i in range(7):
            store.append(message(f"m{i}"), acked.append)
        self.clock.advance(0)
        sizes = []
        while runner.jobs:
            sizes.append(len(runner.jobs[0][1][0]))
            runner.run_one()
        self.assertEqual(sizes, [3, 3, 1])
        self.assertEqual(acked, list(range(1, 8)))

    def test_batches_are_bounded_in_bytes_too(self):
        self.patch(store_module, "MAX_BATCH_BYTES", 1000)
        store, runner = self.open()
        for i in range(5):
            store.append(message("x" * 400), lambda _: None)
        self.clock.advance(0)
        sizes = []
        while runner.jobs:
            sizes.append(len(runner.jobs[0][1][0]))
            runner.run_one()
        self.assertEqual(sizes, [3, 2])  # 3 x (400 + 64) >= 1000

    def test_input_is_paused_while_too_much_waits_for_the_writer(self):
        cost = sys.getsizeof("m0") + store_module.MESSAGE_COST  # every text here: 2 chars
        self.patch(store_module, "HIGH_WATER", 4 * cost)
        self.patch(store_module, "LOW_WATER", 2 * cost)
        self.patch(store_module, "MAX_BATCH", 2)
        store, runner = self.open()
        calls = []
        store.on_pressure(lambda: calls.append("pause"), lambda: calls.append("resume"))
        for i in range(6):
            store.append(message(f"m{i}"), lambda _: None)
        self.assertEqual(calls, ["pause"])  # once, past 4 waiting
        self.clock.advance(0)
        runner.run_one()  # 2 written, 4 wait: still paused
        self.assertEqual(calls, ["pause"])
        runner.run_one()  # 2 wait now: resume
        self.assertEqual(calls, ["pause", "resume"])
        runner.run_all()

    def test_the_bound_on_waiting_messages_is_in_bytes(self):
        # Many short messages fit under the bound where a few long ones do not.
        self.patch(store_module, "HIGH_WATER", 40 * 1024)
        store, runner = self.open()
        calls = []
        store.on_pressure(lambda: calls.append("pause"), lambda: calls.append("resume"))
        for i in range(60):
            store.append(message(f"short {i}"), lambda _: None)
        self.assertEqual(calls, [])  # 60 x ~570 bytes
        for i in range(8):
            store.append(message(f"{i}" + "y" * 4095), lambda _: None)
        self.assertEqual(calls, ["pause"])  # 34 KB + 8 x ~4.6 KB > 40 KiB
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(calls, ["pause", "resume"])

    def test_ids_survive_reopening_and_pruning_never_reuses_them(self):
        store, runner = self.open()
        acked = []
        for i in range(5):
            store.append(message(f"m{i}", t=10.0), acked.append)
        self.clock.advance(0)
        runner.run_all()
        self.close(store, runner)
        store, runner = self.open()
        self.assertEqual(self.read(store, runner, store.prune(20.0)), 5)  # all gone
        store.append(message("after"), acked.append)
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(acked, [1, 2, 3, 4, 5, 6])

    def test_private_messages_are_stored_and_share_the_id_sequence(self):
        store, runner = self.open()
        acked = []
        store.append(message("room"), acked.append)
        store.append(private_message("alice", "bob", "psst", 5.0), acked.append)
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(acked, [1, 2])
        row = sqlite3.connect(self.path).execute(
            "SELECT kind, room, nick, target, text FROM messages WHERE id = 2").fetchone()
        self.assertEqual(row, ("private", None, "alice", "bob", "psst"))
        # ... but are never part of a room's history.
        self.assertEqual([m.text for m in self.read(store, runner, store.recent("lobby", 10))],
                         ["room"])

    def test_failed_write_reports_every_message_and_the_next_batch_works(self):
        store, runner = self.open()
        events = []
        store.append(message("fine"), lambda i: events.append(("done", i)),
                     lambda: events.append(("failed", "fine")))
        # Neither SQLite nor JSON takes this: the whole batch fails.
        store.append(message(Unstorable()), lambda i: events.append(("done", i)),
                     lambda: events.append(("failed", "bad")))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [("failed", "fine"), ("failed", "bad")])
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged plainly, no traceback
        store.append(message("again"), lambda i: events.append(("done", i)))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events[-1], ("done", 1))  # the failed batch used no id

    def test_a_raising_callback_does_not_stop_the_others(self):
        store, runner = self.open()
        acked = []

        def boom(i):
            raise RuntimeError("bug")

        store.append(message("a"), boom)
        store.append(message("b"), acked.append)
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(acked, [2])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_writes_what_is_pending(self):
        store, runner = self.open()
        acked = []
        store.append(message("last words"), acked.append)
        d = store.stopService()  # before the end of the turn
        self.assertNoResult(d)
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual(acked, [1])
        self.assertEqual(sqlite3.connect(self.path).execute(
            "SELECT text FROM messages").fetchall(), [("last words",)])

    def test_wal_mode(self):
        self.open()
        mode = sqlite3.connect(self.path).execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    def test_memory_database_keeps_history_but_no_file(self):
        store, runner = self.open(path=":memory:")
        store.append(message("ephemeral"), lambda i: None)
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual([m.text for m in self.read(store, runner, store.recent("lobby", 5))],
                         ["ephemeral"])
        self.assertEqual(os.listdir(self.dir), [])


class ReadTests(PagingChecks, StoreTestCase):
    def setUp(self):
        super().setUp()
        self.store, self.runner = self.open()
        for i in range(1, 11):
            self.store.append(message(f"lobby {i}", t=float(i), action=(i == 3),
                                      name="Lobby"), lambda _: None)
            self.store.append(message(f"dev {i}", room="dev"), lambda _: None)
        self.clock.advance(0)
        self.runner.run_all()

    def texts(self, d):
        return [m.text for m in self.read(self.store, self.runner, d)]

    def test_recent_is_the_newest_oldest_first_for_one_room(self):
        got = self.read(self.store, self.runner, self.store.recent("lobby", 3))
        self.assertEqual([m.text for m in got], ["lobby 8", "lobby 9", "lobby 10"])
        self.assertEqual([m.id for m in got], [15, 17, 19])
        self.assertEqual((got[0].room, got[0].nick, got[0].t, got[0].action),
                         ("Lobby", "alice", 8.0, False))

    def test_before_pages_backwards(self):
        self.assertEqual(self.texts(self.store.before("lobby", 15, 3)),
                         ["lobby 5", "lobby 6", "lobby 7"])
        self.assertEqual(self.texts(self.store.before("lobby", 9, 100)),
                         ["lobby 1", "lobby 2", "lobby 3", "lobby 4"])
        self.assertEqual(self.texts(self.store.before("lobby", 1, 10)), [])
        got = self.read(self.store, self.runner, self.store.before("lobby", 6, 1))
        self.assertTrue(got[0].action)  # lobby 3 was a /me

    def test_unknown_room_is_empty(self):
        self.assertEqual(self.texts(self.store.recent("nowhere", 10)), [])

    def test_reads_queue_behind_writes(self):
        self.store.append(message("newest"), lambda _: None)
        self.clock.advance(0)  # the write is queued first ...
        d = self.store.recent("lobby", 1)  # ... then the read
        self.assertEqual(self.texts(d), ["newest"])

    def test_prune_removes_only_older_messages_in_chunks(self):
        self.patch(store_module, "PRUNE_CHUNK", 2)
        d = self.store.prune(5.5)  # lobby 1..5 (t=1..5); dev ones are at t=1000
        self.assertEqual(len(self.runner.jobs), 1)  # one chunk at a time
        self.assertEqual(self.read(self.store, self.runner, d), 5)
        self.assertEqual(self.texts(self.store.recent("lobby", 100)),
                         [f"lobby {i}" for i in range(6, 11)])
        self.assertEqual(len(self.texts(self.store.recent("dev", 100))), 10)

    def test_retention_pass_at_start_and_periodically(self):
        store, runner = self.open(path=os.path.join(self.dir, "r.sqlite"),
                                  retention_days=1, prune_interval=600)
        now = self.clock.seconds()
        runner.run_all()  # the pass at start: nothing to do
        store.append(message("old", t=now - 86400 - 60), lambda _: None)
        store.append(message("young", t=now - 60), lambda _: None)
        self.clock.advance(0)
        runner.run_all()
        self.clock.advance(600)  # the next pass
        runner.run_all()
        self.assertEqual([m.text for m in self.read(store, runner, store.recent("lobby", 9))],
                         ["young"])


class SchemaTests(StoreTestCase):
    def test_new_file_is_at_the_latest_version(self):
        conn = schema.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema.version_of(conn), schema.LATEST)
        self.assertEqual(conn.execute("SELECT count(*) FROM schema_version").fetchone(), (1,))

    def test_shipped_schema_files_are_numbered_without_gaps(self):
        files = schema.schema_files()
        self.assertEqual(sorted(files), list(range(1, schema.LATEST + 1)))
        self.assertIn("CREATE TABLE messages", files[1])

    def test_upgrade_runs_each_missing_version_in_order(self):
        v2 = "CREATE TABLE reactions (message INTEGER, emoji TEXT);"
        v1 = self.v1
        self.patch(schema, "schema_files", lambda: {1: v1, 2: v2})
        self.patch(schema, "LATEST", 2)
        conn = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(conn.close)
        self.assertEqual(schema.upgrade(conn), 2)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        self.assertTrue({"messages", "reactions", "schema_version"} <= tables)
        self.assertEqual(schema.version_of(conn), 2)

    @property
    def v1(self):
        return schema.schema_files()[1]

    def test_an_upgrade_another_process_made_meanwhile_is_not_run_again(self):
        # Two openers of one new file (the server's reader and its writer
        # process start together): this one read version 0, then the other
        # upgraded the file before this one took the write lock.
        conn = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(conn.close)
        schema.connect(self.path).close()  # the other process, all the way
        real = schema.version_of
        seen = []

        def stale_first(c):
            seen.append(real(c))
            return 0 if len(seen) == 1 else seen[-1]

        self.patch(schema, "version_of", stale_first)
        self.assertEqual(schema.upgrade(conn), schema.LATEST)
        self.assertEqual(real(conn), schema.LATEST)
        self.assertEqual(conn.execute("SELECT count(*) FROM schema_version").fetchone(), (1,))

    def test_a_failing_upgrade_leaves_the_previous_version(self):
        v1 = self.v1
        self.patch(schema, "schema_files", lambda: {1: v1, 2: "CREATE TABLE x (a);\nBOGUS;"})
        self.patch(schema, "LATEST", 2)
        conn = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(conn.close)
        self.assertRaises(sqlite3.OperationalError, schema.upgrade, conn)
        self.assertEqual(schema.version_of(conn), 1)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        self.assertNotIn("x", tables)

    def test_newer_database_is_refused_untouched(self):
        conn = schema.connect(self.path)
        conn.execute("UPDATE schema_version SET version = ?", (schema.LATEST + 1,))
        conn.close()
        for attempt in (schema.check, schema.connect):
            e = self.assertRaises(HistoryError, attempt, self.path)
            self.assertIn("newer twisted-chat", str(e))

    def test_corrupt_file(self):
        with open(self.path, "wb") as f:
            f.write(b"this is not an sqlite database at all" * 100)
        for attempt in (schema.check, schema.connect):
            e = self.assertRaises(HistoryError, attempt, self.path)
            self.assertIn("corrupt or not an SQLite database", str(e))
        store = SQLiteHistory(self.path, clock=self.clock, runner=ManualRunner())
        self.assertRaises(HistoryError, store.startService)

    def test_foreign_database(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE accounts (name TEXT)")
        conn.commit()
        conn.close()
        e = self.assertRaises(HistoryError, schema.check, self.path)
        self.assertIn("not a twisted-chat history database", str(e))

    def test_check_creates_nothing_and_names_bad_places(self):
        schema.check(self.path)
        schema.check(":memory:")
        self.assertEqual(os.listdir(self.dir), [])
        e = self.assertRaises(HistoryError, schema.check,
                              os.path.join(self.dir, "missing", "chat.sqlite"))
        self.assertIn("does not exist", str(e))
        e = self.assertRaises(HistoryError, schema.check, self.dir)
        self.assertIn("not a regular file", str(e))
