"""Start the servers the benchmark measures, as real subprocesses, and read their memory.

``ours`` is ``twistd -n chat`` (every feature the options give it);
``metrics`` is the same with ``--metrics`` on and scraped every second;
``bare`` is :mod:`twisted_chat.bench.baseline`. Both listen on an ephemeral
loopback port with a listen backlog that fits a connection storm, and both get
the fd soft limit raised to the hard limit before ``exec``.
"""

import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import shutil

from ..procs import stop_process


def raise_fd_limit():
    """Raise the open-file soft limit to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def twistd_command():
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ServerProcess:
    """A server subprocess; ``port`` once it listens, ``pid`` for /proc."""

    name = "?"
    listening = re.compile(r"")

    def __init__(self, extra_args=()):
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.tail = []  # the last log lines, for error reports
        self.env = {}  # set in the server's environment
        self.dir = tempfile.mkdtemp(prefix=f"chat-bench-{self.name}-")
        self._port_seen = threading.Event()

    def command(self):
        raise NotImplementedError

    def start(self, timeout=20.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            self.command(), cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=raise_fd_limit,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port_seen.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.name} server did not start:\n" + "\n".join(self.tail))
        return self

    def _read(self):
        # Always drain the log (a chat server logs every connect): a full
        # pipe would stall the server under test.
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            del self.tail[:-50]
            self.log_line(line)
            if self.port is None:
                m = self.listening.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._port_seen.set()

    def log_line(self, line):
        """Called with every log line of the server; subclasses count what they need."""

    @property
    def pid(self):
        return self.proc.pid

    def status(self, key):
        """A /proc/PID/status field in KiB (VmRSS, VmHWM), or None once it exited."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_seconds(self):
        """User + system CPU time the server has used so far."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# Every feature stays on; the limits are set generously so that they never
# trigger in the benchmark: its senders are floods by design and its members
# all come from 127.0.0.1. ``--server-arg`` options come later and win.
OUR_DEFAULT_ARGS = ["--rate", "100000", "--burst", "100000", "--max-per-ip", "0",
                    "--max-clients", "15000"]


# Every listener of the server under test: an ephemeral loopback port with a
# backlog that fits a connection storm.
LOOPBACK_LISTENER = "tcp:0:interface=127.0.0.1:backlog=4096"


# Replayed history: filler lines of a typical chat line's length.
PREFILL_TEXT = "a line of earlier conversation, replayed to every joiner of the room #{}"


def prefill_history(path, room, count, text=PREFILL_TEXT):
    """Write ``count`` messages said in ``room`` into the history database
    at ``path`` (created if needed), so that every joiner gets a replay."""
    from twisted_chat.commands import fold
    from twisted_chat.history import schema, writer
    from twisted_chat.history.interface import room_message

    conn = schema.connect(path)
    try:
        now = time.time() - count
        writer.write_batch(conn, [room_message(fold(room), room, f"earlier{i % 7}",
                                               text.format(i), now + i)
                                  for i in range(count)])
    finally:
        conn.close()


class OurServer(ServerProcess):
    """``twistd -n chat`` on an ephemeral loopback port; ``extra_args`` go to ``chat``.

    ``prefill``: messages written into its history (``chat.sqlite`` in its
    directory) before it starts, said in each room of ``rooms``.

    ``face``: which of its listeners ``port`` is: ``line`` (the line
    protocol's ``--port``), ``irc`` (an ``--irc`` listener is added) or
    ``ws`` (a ``--web`` listener is added; its WebSocket is at ``/ws``).
    """

    name = "ours"
    listening = re.compile(r"chat listening on tcp:(\d+)")
    FACE_OPTIONS = {"line": (), "irc": ("--irc",), "ws": ("--web",)}
    FACE_LISTENING = {"irc": re.compile(r"irc listening on tcp:(\d+)"),
                      "ws": re.compile(r"web listening on tcp:(\d+)")}

    def __init__(self, extra_args=(), prefill=0, rooms=("lobby",), face="line"):
        options = [arg for option in self.FACE_OPTIONS[face]
                   for arg in (option, LOOPBACK_LISTENER)]
        super().__init__(options + list(extra_args))
        self.face = face
        if face in self.FACE_LISTENING:
            self.listening = self.FACE_LISTENING[face]
        for room in rooms if prefill else ():
            prefill_history(os.path.join(self.dir, "chat.sqlite"), room, prefill)

    def command(self):
        return twistd_command() + [
            "-n", "--pidfile=", "chat",
            "--port", LOOPBACK_LISTENER,
        ] + OUR_DEFAULT_ARGS + self.extra_args


class MetricsServer(OurServer):
    """``ours`` with ``--metrics`` on, scraped the way Prometheus would (every
    ``scrape_interval`` seconds, over HTTP) while it runs; ``scrapes`` counts
    the scrapes that succeeded."""

    name = "metrics"
    metrics_listening = re.compile(r"metrics listening on tcp:(\d+)")

    def __init__(self, extra_args=(), scrape_interval=1.0, prefill=0):
        super().__init__(["--metrics", "tcp:0:interface=127.0.0.1"] + list(extra_args),
                         prefill=prefill)
        self.scrape_interval = scrape_interval
        self.metrics_port = None
        self.scrapes = 0
        self._stop = threading.Event()

    def log_line(self, line):
        if self.metrics_port is None:
            m = self.metrics_listening.search(line)
            if m:
                self.metrics_port = int(m.group(1))
                threading.Thread(target=self._scrape, daemon=True).start()

    def _scrape(self):
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        while not self._stop.wait(self.scrape_interval):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        super().stop()


class BareServer(ServerProcess):
    """The bare LineReceiver broadcast baseline."""

    name = "bare"
    listening = re.compile(r"listening on (\d+)")

    def command(self):
        return [sys.executable, "-m", "twisted_chat.bench.baseline", "--port", "0"]


class RSSSampler:
    """Samples a server's VmRSS in a thread; ``peak`` is the highest seen (KiB)."""

    def __init__(self, server, interval=0.05):
        self.server = server
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            rss = self.server.status("VmRSS")
            if rss:
                self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
