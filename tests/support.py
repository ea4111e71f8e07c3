"""Test helpers: a real ``twistd chat`` process and blocking line clients.

These run no reactor in the test process, so tests built on them behave the
same under ``python -m pytest`` and ``python -m twisted.trial tests``.
"""

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted_chat.procs import stop_process

DEFAULT_TIMEOUT = 15.0


def twistd_command():
    """The installed ``twistd`` beside this Python, or its entry point."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ChatServer:
    """A real ``twistd -n chat`` process listening on an ephemeral loopback port.

    ``args`` are extra ``twistd chat`` options, ``twistd_args`` twistd's own.
    The process runs in its own
    temporary directory (``self.dir``); ``stop()`` ends it and removes that.
    """

    LISTENING = re.compile(r"chat listening on tcp:(\d+)")

    def __init__(self, *args, port="tcp:0:interface=127.0.0.1", directory=None, env=None,
                 twistd_args=()):
        self.args = list(args)
        self.twistd_args = list(twistd_args)  # twistd's own options, e.g. --logger
        self.port_spec = port
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="chat-test-")
        self.env = env
        self.proc = None
        self.port = None
        self.log = []
        self._lines = queue.Queue()
        self._clients = []  # line() clients, closed by stop()

    def start(self, timeout=DEFAULT_TIMEOUT):
        cmd = twistd_command() + ["-n", "--pidfile="] + self.twistd_args + ["chat"]
        if self.port_spec is not None:
            cmd += ["--port", self.port_spec]
        cmd += self.args
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.port_spec is not None:
            line = self.wait_for_log(self.LISTENING, timeout)
            self.port = int(self.LISTENING.search(line).group(1))
        return self

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_log(self, pattern, timeout=DEFAULT_TIMEOUT):
        """Return the first new log line matching ``pattern`` (a regex)."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line matching {pattern.pattern!r}:\n" + self.logtext())
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"twistd exited ({self.proc.wait()}) before {pattern.pattern!r}:\n" + self.logtext()
                )
            if pattern.search(line):
                return line

    def logged(self, pattern, timeout=DEFAULT_TIMEOUT):
        """The first log line so far matching ``pattern`` (a regex), or else
        the next one (start() reads the lines up to the listening one)."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in list(self.log):
            if pattern.search(line):
                return line
        return self.wait_for_log(pattern, timeout)

    def listener(self, prefix, timeout=DEFAULT_TIMEOUT):
        """The port of the listener whose ``--port`` description starts with
        ``prefix`` (e.g. ``ssl:``), once it has announced itself."""
        pattern = re.compile(r"chat listening on tcp:(\d+)\S* \(" + re.escape(prefix))
        for line in list(self.log):
            if pattern.search(line):
                break
        else:
            line = self.wait_for_log(pattern, timeout)
        return int(pattern.search(line).group(1))

    def logtext(self):
        return "\n".join(self.log)

    def client(self, **kw):
        return LineClient(self.port, **kw)

    def line(self, nick):
        """A line-protocol client in JSON mode, named ``nick`` (its welcome
        and first names read); ``stop()`` closes it before the server stops."""
        c = self.client()
        self._clients.append(c)
        c.json_mode(nick)
        return c

    def grep(self, pattern):
        """Log lines so far matching ``pattern`` (a regex), without waiting."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        return [line for line in list(self.log) if pattern.search(line)]

    def stop(self, sig=signal.SIGTERM, timeout=DEFAULT_TIMEOUT):
        """Stop the process (SIGTERM by default) and return its exit code."""
        code = None
        while self._clients:
            self._clients.pop().close()
        if self.proc is not None:
            code = stop_process(self.proc, timeout, sig)
            # Let the reader drain to EOF first: closing the pipe under a
            # reading thread makes it raise (PyMemoryView_FromBuffer).
            self._reader.join(5)
            self.proc.stdout.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return code


class LineClient:
    """A blocking socket client of the chat line protocol."""

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT, source=None, tls=None,
                 server_hostname=None):
        # ``source``: a local address to connect from (another 127.x.y.z
        # address looks like another machine to the server).
        # ``tls``: an ``ssl.SSLContext`` to speak TLS (the handshake happens here).
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname or host)
            except BaseException:
                self.sock.close()
                raise
        self.timeout = timeout
        self._buf = b""
        self.seen = []  # every line received so far, decoded

    def send(self, *lines):
        data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\r\n"
                        for line in lines)
        self.sock.sendall(data)

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def readline(self, timeout=None):
        """The next line (without CRLF); raises AssertionError on timeout or EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for a line; seen: {self.seen[-10:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise EOFError(f"connection closed; seen: {self.seen[-10:]}")
            self._buf += data
        line, self._buf = self._buf.split(b"\r\n", 1)
        text = line.decode("utf-8")
        self.seen.append(text)
        return text

    def expect(self, predicate, timeout=None):
        """Read lines until ``predicate(line)`` holds; return that line."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.001))
            if predicate(line):
                return line

    def expect_text(self, fragment, timeout=None):
        return self.expect(lambda line: fragment in line, timeout)

    def event(self, timeout=None):
        return json.loads(self.readline(timeout))

    def expect_event(self, type, timeout=None, **fields):
        """Read JSON lines until an event of ``type`` whose fields match."""
        def match(line):
            try:
                ev = json.loads(line)
            except ValueError:
                return False
            return ev.get("type") == type and all(ev.get(k) == v for k, v in fields.items())
        return json.loads(self.expect(match, timeout))

    def json_mode(self, nick=None):
        """Switch to JSON mode (and set ``nick``); return the JSON welcome."""
        self.send("/mode json")
        welcome = self.expect_event("welcome")
        if nick is not None:
            self.send(f"/nick {nick}")
            self.expect_event("names")
        return welcome

    def quiet(self, wait=0.3):
        """Lines that arrive within ``wait`` seconds (none expected, usually)."""
        got = []
        try:
            while True:
                got.append(self.readline(wait))
        except (AssertionError, EOFError):
            return got

    def closed(self, timeout=None):
        """True once the server has closed the connection (lines before that are kept)."""
        try:
            while True:
                self.readline(timeout)
        except EOFError:
            return True
        except AssertionError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
