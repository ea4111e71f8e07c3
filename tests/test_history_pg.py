"""The PostgreSQL history store against a real PostgreSQL (tests/pg_support):
the contract of the SQLite store's tests where it applies (group commit,
order, ids, failures, back-pressure, reads, pruning, rooms, the versioned
schema), PostgreSQL going away and coming back, and ``--db`` checks.

Writes and reads run through a runner the test drives by hand, and the
reactor is a Clock, so each step (end of turn, commit, callbacks) is visible.
"""

import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_chat.history import HistoryError, IHistoryStore, IRoomStore, RoomRecord, pg
from twisted_chat.history import private_message
from twisted_chat.history import sqlite as store_module
from twisted_chat.history.pg import PostgresHistory

from .pg_support import PostgresServer, PostgresTestCase
from .test_history_rooms import FULL
from .test_history_store import ManualRunner, PagingChecks, message


class PgStoreTestCase(PostgresTestCase):
    def setUp(self):
        super().setUp()
        self.clock = Clock()
        self.clock.advance(100_000)

    def open(self, url=None, **kw):
        runner = ManualRunner()
        store = PostgresHistory(url or self.url, clock=self.clock, runner=runner, **kw)
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

    def rows(self, statement, url=None):
        return [tuple(row) for row in self.pg.sql(url or self.url, statement)]


class GroupCommitTests(PgStoreTestCase):
    def test_the_store_provides_the_interfaces(self):
        store, runner = self.open()
        self.assertTrue(verifyObject(IHistoryStore, store))
        self.assertTrue(verifyObject(IRoomStore, store))
        self.assertEqual(store.last_id_at_start, 0)

    def test_a_turn_is_one_transaction_and_done_follows_the_commit(self):
        store, runner = self.open()
        acked = []
        for i in range(3):
            store.append(message(f"m{i}"), acked.append)
        self.assertEqual(runner.jobs, [])  # nothing before the end of the turn
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)  # one write for the whole turn
        self.assertEqual(acked, [])
        self.assertEqual(self.rows("SELECT count(*) FROM messages"), [(0,)])
        runner.run_one()
        self.assertEqual(acked, [1, 2, 3])
        # Committed: another connection sees the rows.
        self.assertEqual(self.rows("SELECT id, text FROM messages ORDER BY id"),
                         [(1, "m0"), (2, "m1"), (3, "m2")])

    def test_batches_of_any_size_keep_ids_and_order(self):
        store, runner = self.open()
        acked, texts = [], []
        for size in (1, 99, 100, 101, 1500):
            for i in range(size):
                texts.append(f"{size}:{i}")
                store.append(message(texts[-1]), acked.append)
            self.clock.advance(0)
            runner.run_all()
        self.assertEqual(acked, list(range(1, len(texts) + 1)))
        self.assertEqual(self.rows("SELECT id, text FROM messages ORDER BY id"),
                         list(enumerate(texts, 1)))

    def test_texts_survive_the_batch_intact(self):
        store, runner = self.open()
        texts = ["tab\there", "emoji \U0001F600", "nul-free \\ backslash", "x" * 5000,
                 "' OR 1=1; --", '{"a": "b"}', "NULL", ""]
        for text in texts:
            store.append(message(text, action=True), lambda _: None)
        self.clock.advance(0)
        runner.run_all()
        got = self.read(store, runner, store.recent("lobby", 9))
        self.assertEqual([m.text for m in got], texts)
        self.assertTrue(all(m.action is True for m in got))

    def test_messages_accumulate_while_a_batch_is_written(self):
        store, runner = self.open(max_in_flight=1)
        acked = []
        store.append(message("first"), lambda i: acked.append(("first", i)))
        self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        for turn in range(3):  # three more turns while the first write runs
            store.append(message(f"later{turn}"), lambda i, n=turn: acked.append((n, i)))
            self.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        runner.run_one()
        self.assertEqual(acked, [("first", 1)])
        self.assertEqual(len(runner.jobs), 1)  # the next batch went at once
        runner.run_one()
        self.assertEqual(acked, [("first", 1), (0, 2), (1, 3), (2, 4)])
        self.assertEqual(runner.jobs, [])

    def test_batches_in_flight_answer_in_order_one_failing(self):
        # PostgreSQL refuses a NUL in text: that batch fails, alone, in its turn.
        self.patch(store_module, "MAX_BATCH", 2)
        store, runner = self.open(max_in_flight=3)
        events = []
        for i in range(7):
            text = "bad\x00" if i == 3 else f"m{i}"
            store.append(message(text), lambda n, i=i: events.append((i, n)),
                         lambda i=i: events.append((i, "failed")))
        self.clock.advance(0)
        self.assertEqual([len(job[1][1]) for job in runner.jobs], [2, 2, 2])  # 3 at once
        runner.run_one()
        self.assertEqual(len(runner.jobs), 3)  # an answer lets the last batch go
        runner.run_all()
        self.assertEqual(events, [(0, 1), (1, 2), (2, "failed"), (3, "failed"),
                                  (4, 3), (5, 4), (6, 5)])
        self.assertEqual(self.successResultOf(store.drain()), None)
        self.assertEqual(store.not_stored, 2)

    def test_a_flood_is_written_in_bounded_batches_in_order(self):
        self.patch(store_module, "MAX_BATCH", 3)
        store, runner = self.open(max_in_flight=1)
        acked = []
        for i in range(7):
            store.append(message(f"m{i}"), acked.append)
        self.clock.advance(0)
        sizes = []
        while runner.jobs:
            sizes.append(len(runner.jobs[0][1][1]))
            runner.run_one()
        self.assertEqual(sizes, [3, 3, 1])
        self.assertEqual(acked, list(range(1, 8)))

    def test_input_is_paused_while_too_much_waits_for_the_writer(self):
        # The bound is in bytes (inherited from the SQLite store): each text
        # here costs the same.
        cost = sys.getsizeof("m0") + store_module.MESSAGE_COST
        self.patch(store_module, "HIGH_WATER", 4 * cost)
        self.patch(store_module, "LOW_WATER", 2 * cost)
        self.patch(store_module, "MAX_BATCH", 2)
        store, runner = self.open(max_in_flight=1)
        calls = []
        store.on_pressure(lambda: calls.append("pause"), lambda: calls.append("resume"))
        for i in range(6):
            store.append(message(f"m{i}"), lambda _: None)
        self.assertEqual(calls, ["pause"])
        self.clock.advance(0)
        runner.run_one()  # 2 written, 4 wait: still paused
        self.assertEqual(calls, ["pause"])
        runner.run_one()  # 2 wait now: resume
        self.assertEqual(calls, ["pause", "resume"])
        runner.run_all()

    def test_ids_survive_reopening_and_pruning_never_reuses_them(self):
        store, runner = self.open()
        acked = []
        for i in range(5):
            store.append(message(f"m{i}", t=10.0), acked.append)
        self.clock.advance(0)
        runner.run_all()
        self.close(store, runner)
        store, runner = self.open()
        self.assertEqual(store.last_id_at_start, 5)
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
        self.assertEqual(
            self.rows("SELECT kind, room, nick, target, text FROM messages WHERE id = 2"),
            [("private", None, "alice", "bob", "psst")])
        self.assertEqual([m.text for m in self.read(store, runner, store.recent("lobby", 10))],
                         ["room"])

    def test_failed_write_reports_every_message_and_uses_no_id(self):
        store, runner = self.open()
        events = []
        store.append(message("fine"), lambda i: events.append(("done", i)),
                     lambda: events.append(("failed", "fine")))
        store.append(message("\x00"), lambda i: events.append(("done", i)),
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
        self.assertEqual(self.rows("SELECT text FROM messages"), [("last words",)])

    def test_probe_answers(self):
        store, runner = self.open()
        d = store.probe()
        runner.run_all()
        self.successResultOf(d)


class ReadTests(PagingChecks, PgStoreTestCase):
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
        self.assertTrue(got[0].action)

    def test_unknown_room_is_empty(self):
        self.assertEqual(self.texts(self.store.recent("nowhere", 10)), [])

    def test_prune_removes_only_older_messages_in_chunks(self):
        self.patch(store_module, "PRUNE_CHUNK", 2)
        d = self.store.prune(5.5)  # lobby 1..5 (t=1..5); dev ones are at t=1000
        self.assertEqual(len(self.runner.jobs), 1)  # one chunk at a time
        self.assertEqual(self.read(self.store, self.runner, d), 5)
        self.assertEqual(self.texts(self.store.recent("lobby", 100)),
                         [f"lobby {i}" for i in range(6, 11)])
        self.assertEqual(len(self.texts(self.store.recent("dev", 100))), 10)

    def test_retention_pass_at_start_and_periodically(self):
        url = self.pg.create_database()
        store, runner = self.open(url, retention_days=1, prune_interval=600)
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


class RoomTests(PgStoreTestCase):
    def load(self, store, runner):
        return self.read(store, runner, store.load_rooms())

    def save(self, store, runner, record):
        d = store.save_room(record)
        self.clock.advance(0)
        runner.run_all()
        return d

    def test_every_field_survives_reopening(self):
        store, runner = self.open()
        self.assertEqual(self.load(store, runner), {})
        self.successResultOf(self.save(store, runner, FULL))
        plain = RoomRecord("lobby", "Lobby", topic="hi")
        self.successResultOf(self.save(store, runner, plain))
        self.close(store, runner)
        store, runner = self.open()
        self.assertEqual(self.load(store, runner), {"dev": FULL, "lobby": plain})

    def test_a_save_replaces_the_whole_room_and_a_default_deletes_it(self):
        store, runner = self.open()
        self.save(store, runner, FULL)
        smaller = FULL._replace(ops=("carol",), bans=())
        self.successResultOf(self.save(store, runner, smaller))
        self.assertEqual(self.load(store, runner), {"dev": smaller})
        self.successResultOf(self.save(store, runner, RoomRecord("dev", "Dev")))
        self.assertEqual(self.load(store, runner), {})
        for table in ("rooms", "room_ops", "room_bans"):
            self.assertEqual(self.rows(f"SELECT count(*) FROM {table}"), [(0,)])

    def test_saves_are_ordered_with_messages(self):
        store, runner = self.open(max_in_flight=4)
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        store.save_room(FULL).addCallback(lambda _: events.append("saved topic"))
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        store.append(message("m3"), lambda i: events.append(("m3", i)))
        store.save_room(FULL._replace(topic="later")).addCallback(
            lambda _: events.append("saved later"))
        self.clock.advance(0)
        # The turn's messages are cut into batches around each save.
        self.assertEqual([job[1][0].__name__ for job in runner.jobs],
                         ["write_batch", "save_room", "write_batch", "save_room"])
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "saved topic", ("m2", 2), ("m3", 3),
                                  "saved later"])
        self.assertEqual(self.load(store, runner)["dev"].topic, "later")

    def test_a_failed_save_fails_alone_and_keeps_what_was_kept(self):
        store, runner = self.open(max_in_flight=4)
        self.save(store, runner, FULL)
        events = []
        store.append(message("m1"), lambda i: events.append(("m1", i)))
        # The bans are written after the room's row: the failure comes
        # half-way, and the transaction takes it all back.
        failing = store.save_room(FULL._replace(topic="new", limit=0))
        failing.addErrback(lambda f: events.append("save failed") or f)
        store.append(message("m2"), lambda i: events.append(("m2", i)))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [("m1", 1), "save failed", ("m2", 2)])
        self.failureResultOf(failing, HistoryError)
        self.assertEqual(self.load(store, runner), {"dev": FULL})


class SchemaTests(PgStoreTestCase):
    def test_a_new_database_is_at_the_latest_version(self):
        self.open()
        self.assertEqual(self.rows("SELECT version FROM schema_version"), [(pg.LATEST,)])
        files = pg.schema_files()
        self.assertEqual(sorted(files), list(range(1, pg.LATEST + 1)))
        self.assertIn("CREATE TABLE messages", files[1])

    def test_upgrade_runs_each_missing_version_in_one_transaction(self):
        v1 = pg.schema_files()[1]
        self.patch(pg, "schema_files", lambda: {1: v1})
        self.patch(pg, "LATEST", 1)
        self.open()
        self.pg.sql(self.url, "INSERT INTO messages (id, kind, room, room_name, nick, text, t)"
                              " VALUES (1, 'message', 'lobby', 'lobby', 'a', 'kept', 1)")
        broken = {1: v1, 2: "CREATE TABLE reactions (message bigint);\nBOGUS;"}
        self.patch(pg, "schema_files", lambda: broken)
        self.patch(pg, "LATEST", 2)
        self.assertRaises(HistoryError, pg.open_database, self.url)
        self.assertEqual(self.rows("SELECT version FROM schema_version"), [(1,)])
        self.assertEqual(self.rows("SELECT to_regclass('reactions') IS NULL"), [(True,)])
        broken[2] = "CREATE TABLE reactions (message bigint);"
        pg.open_database(self.url).close()
        self.assertEqual(self.rows("SELECT version FROM schema_version"), [(2,)])
        self.assertEqual(self.rows("SELECT text FROM messages"), [("kept",)])

    def test_a_newer_database_is_refused_untouched(self):
        self.open()
        self.pg.sql(self.url, "UPDATE schema_version SET version = %s", (pg.LATEST + 1,))
        e = self.assertRaises(HistoryError, PostgresHistory(self.url).startService)
        self.assertIn("newer twisted-chat", str(e))

    def test_a_foreign_database_is_refused(self):
        self.pg.sql(self.url, "CREATE TABLE accounts (name text)")
        e = self.assertRaises(HistoryError, PostgresHistory(self.url).startService)
        self.assertIn("not a twisted-chat history database", str(e))

    def test_a_missing_database_says_so(self):
        e = self.assertRaises(HistoryError, PostgresHistory(self.pg.url("nothere")).startService)
        self.assertIn('database "nothere" does not exist', str(e))


class OutageTests(PgStoreTestCase):
    """PostgreSQL stopped under the store, then started again: on a server
    of this test's own (the shared one stays up)."""

    def setUp(self):
        super().setUp()
        self.own = PostgresServer().start()
        self.addCleanup(self.own.destroy)
        self.url = self.own.create_database()

    def test_messages_fail_while_it_is_down_and_the_store_recovers(self):
        store, runner = self.open()
        events = []
        store.append(message("before"), events.append, lambda: events.append("failed"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [1])
        reads = store.recent("lobby", 5)
        self.assertEqual(len(self.read(store, runner, reads)), 1)  # the reader is connected

        self.own.stop()
        store.append(message("lost"), events.append, lambda: events.append("failed"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [1, "failed"])
        self.assertIsNotNone(store.write_failure)
        for d in (store.recent("lobby", 5), store.probe()):
            runner.run_all()
            self.failureResultOf(d, HistoryError)

        self.own.start()
        store.append(message("after"), events.append, lambda: events.append("failed"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [1, "failed", 2])
        self.assertIsNone(store.write_failure)
        d = store.recent("lobby", 5)
        self.assertEqual([m.text for m in self.read(store, runner, d)], ["before", "after"])

    def test_a_restart_while_idle_loses_nothing(self):
        # Both connections died with the old server: they are replaced
        # before use, so the first write and the first read after it work.
        store, runner = self.open()
        events = []
        store.append(message("before"), events.append, lambda: events.append("failed"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(len(self.read(store, runner, store.recent("lobby", 5))), 1)
        self.own.stop()
        self.own.start()
        store.append(message("after"), events.append, lambda: events.append("failed"))
        self.clock.advance(0)
        runner.run_all()
        self.assertEqual(events, [1, 2])
        d = store.recent("lobby", 5)
        self.assertEqual([m.text for m in self.read(store, runner, d)], ["before", "after"])

    def test_unreachable_at_start_is_one_clear_error(self):
        self.own.stop()
        e = self.assertRaises(HistoryError, PostgresHistory(self.url).startService)
        self.assertIn("connection", str(e))
        self.assertNotIn("\n", str(e))


class URLTests(SynchronousTestCase):
    """``--db`` values that look like URLs; no PostgreSQL needed."""

    def test_postgres_urls_are_recognised(self):
        for url in ("postgresql://chat@db.lan/chat", "postgres://u:p@h:5433/d",
                    "POSTGRESQL://x/y"):
            self.assertTrue(pg.is_url(url) and pg.is_postgres(url), url)
        for path in ("chat.sqlite", ":memory:", "/var/lib/chat/chat.sqlite", "c:/x.sqlite"):
            self.assertFalse(pg.is_url(path), path)

    def test_other_urls_are_refused_by_name(self):
        e = self.assertRaises(HistoryError, pg.check, "mysql://chat@db/chat")
        self.assertIn("mysql:// is not a database this server knows", str(e))

    def test_without_psycopg_the_error_says_how_to_install_it(self):
        saved = sys.modules.get("psycopg")
        sys.modules["psycopg"] = None  # import psycopg raises ImportError
        self.addCleanup(sys.modules.__setitem__, "psycopg", saved)
        e = self.assertRaises(HistoryError, pg.check, "postgresql://chat@db/chat")
        self.assertIn("psycopg", str(e))
        self.assertIn("[cluster]", str(e))

    def test_describe_hides_the_password(self):
        self.assertEqual(pg.describe("postgresql://chat:s3cret@db.lan:5432/chat"),
                         "postgresql://chat:***@db.lan:5432/chat")
        self.assertEqual(pg.describe("postgresql://chat@db.lan/chat"),
                         "postgresql://chat@db.lan/chat")


class HungUpTests(SynchronousTestCase):
    """pg._hung_up: an idle connection with nothing to read is kept (it once
    said True for every connection: the module's select() shadowed the
    select module, so every request reconnected)."""

    def test_idle_is_kept_and_readable_is_not(self):
        import socket

        from twisted_chat.history import pg

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(pg._hung_up(a))
        b.send(b"x")
        self.assertTrue(pg._hung_up(a))
