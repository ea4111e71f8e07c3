"""A real PostgreSQL server for tests: its own cluster in a temp directory.

Debian's ``postgresql`` package provides the binaries
(``/usr/lib/postgresql/VERSION/bin``); its own cluster, if any, is not used.
PostgreSQL refuses to run as root, so as root the cluster belongs to, and
runs as, the ``postgres`` user. It listens on a free loopback port and a
socket in its own directory. ``PostgresTestCase`` gives each test a fresh
database on one server shared by the run (started on first use, destroyed at
exit); a test that stops or breaks its server makes one of its own.
"""

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase


def _bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("initdb")
    return os.path.dirname(on_path) if on_path else None


def why_not() -> str:
    """Why PostgreSQL tests cannot run here ('' when they can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[test]')"
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster: ``start()``, ``stop()`` (and start again: the
    data stays), ``destroy()``; ``url(dbname)`` for a client."""

    def __init__(self, fsync=False):
        self.bin = _bindir()
        self.fsync = fsync
        self.dir = tempfile.mkdtemp(prefix="chat-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._databases = itertools.count(1)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale", "C", "--no-sync")

    def _run(self, tool, *args):
        cmd = [os.path.join(self.bin, tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=120, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}")
        return result.stdout

    def start(self):
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
                   f" -c fsync={'on' if self.fsync else 'off'}")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def destroy(self):
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname="postgres", user="postgres"):
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"chat{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, url, statement, params=()):
        """Run one statement on ``url``; its rows (if any)."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else None


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
