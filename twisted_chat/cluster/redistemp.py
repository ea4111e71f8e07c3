"""A throwaway Redis server: Debian's ``redis-server`` in a temp directory,
on a free loopback port, nothing saved (``--save "" --appendonly no``); for
the tests and the cluster benchmark (``python -m twisted_chat.cluster.bench``),
never for serving. ``stop()`` and ``start()`` again keep the port, so a test
can restart Redis under running chat servers."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from ..history.pgtemp import free_port
from ..procs import stop_process


def why_not() -> str:
    """Why a throwaway Redis cannot run here ('' when it can)."""
    try:
        import txredisapi  # noqa: F401
    except ImportError:
        return "txredisapi is not installed (pip install '.[cluster]')"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return ""


class RedisServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chat-redis-")
        self.port = free_port()
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self, timeout=15.0):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.logtext()}")
            time.sleep(0.05)

    def command(self, *words) -> bytes:
        """Send one command; its first reply line (enough for PING, PUBLISH)."""
        data = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(data)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.rstrip(b"\r\n")

    def logtext(self) -> str:
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, 15)
        self.proc = None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
