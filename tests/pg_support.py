"""A real PostgreSQL server for tests: its own cluster in a temp directory.

The cluster is :class:`twisted_chat.history.pgtemp.PostgresServer` on
Debian's ``postgresql`` binaries (its own cluster, if any, is not used), on
a free loopback port. ``PostgresTestCase`` gives each test a fresh
database on one server shared by the run (started on first use, destroyed at
exit); a test that stops or breaks its server makes one of its own.
"""

import atexit

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_chat.history.pgtemp import PostgresServer, why_not

__all__ = ["PostgresServer", "PostgresTestCase", "shared_server", "why_not"]


_shared = None


def shared_server() -> PostgresServer:
    """The one server of this test run, started on first use and destroyed
    when the process exits (trial calls no setUpClass/tearDownClass, so the
    fixture is the module's, not a class's)."""
    global _shared
    if _shared is None:
        server = PostgresServer()
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        atexit.register(server.destroy)
        _shared = server
    return _shared


class PostgresTestCase(SynchronousTestCase):
    """``self.pg`` the run's PostgreSQL server, ``self.url`` a fresh database
    for each test (dropped after it)."""

    def setUp(self):
        reason = why_not()
        if reason:
            raise SkipTest(reason)
        self.pg = shared_server()
        if not self.pg.running():
            self.pg.start()  # a test stopped it
        self.url = self.pg.create_database()
        self.addCleanup(self.drop, self.url.rsplit("/", 1)[1])

    def drop(self, name):
        if self.pg.running():
            self.pg.sql(self.pg.url(), f"DROP DATABASE {name} WITH (FORCE)")
