"""Test helpers for the real Tk window: a display, and the client app in a subprocess.

The window runs in its own process (tests/tk_driver.py) with the real reactor
and tksupport, so the test process runs no reactor and behaves the same under
pytest and trial. :func:`display` uses ``$DISPLAY`` or starts a private Xvfb.
"""

import json
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time

from twisted_chat.procs import stop_process, wait_or_kill

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tk_driver.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 20.0


def tkinter_missing():
    """Why tkinter cannot be used here, or None."""
    try:
        import tkinter  # noqa: F401
    except ImportError as e:
        return f"tkinter is not importable ({e}); install Python's Tk support (python3-tk)"
    return None


class Xvfb:
    """A private virtual X display; ``-displayfd`` picks a free display number."""

    def __init__(self):
        self.proc = None
        self.display = None

    def start(self, timeout=10.0):
        binary = shutil.which("Xvfb")
        if binary is None:
            return None
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [binary, "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(w)
        try:
            got = b""
            deadline = time.monotonic() + timeout
            while not got.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([r], [], [], remaining)[0]:
                    raise AssertionError("Xvfb did not report its display number")
                chunk = os.read(r, 64)
                if not chunk:
                    raise AssertionError(f"Xvfb exited ({self.proc.wait()}) before starting")
                got += chunk
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(r)
        self.display = ":" + got.decode().strip()
        return self.display

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


def display(test):
    """A usable DISPLAY for ``test`` (a TestCase), or skip the test saying why."""
    why = tkinter_missing()
    if why:
        test.skipTest(why)
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    xvfb = Xvfb()
    found = xvfb.start()
    if found is None:
        test.skipTest("no display: DISPLAY is unset and there is no Xvfb binary "
                      "(Debian: apt-get install xvfb) to start one")
    test.addCleanup(xvfb.stop)
    return found


class WindowClient:
    """The real client app (tests/tk_driver.py) on ``display``, driven over its stdin/stdout."""

    def __init__(self, display, *args):
        env = dict(os.environ, DISPLAY=display, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, DRIVER] + list(args), cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._replies = queue.Queue()
        self.stderr = []
        self._seq = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_thread.start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            self._replies.put(json.loads(raw))
        self._replies.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace"))

    def errors(self):
        return "".join(self.stderr)

    def call(self, op, timeout=TIMEOUT, **args):
        """Send one command and return its reply (a dict)."""
        self._seq += 1
        seq = self._seq
        self.proc.stdin.write((json.dumps(dict(args, op=op, seq=seq)) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no reply to {op}; stderr:\n{self.errors()}")
            if reply is None:
                raise AssertionError(f"client exited ({self.proc.wait()}) during {op}; "
                                     f"stderr:\n{self.errors()}")
            if reply.get("seq") == seq:
                if "error" in reply:
                    raise AssertionError(f"{op} failed in the client: {reply['error']}")
                return reply

    def dump(self):
        return self.call("dump")

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        """Poll the widgets until ``predicate(state)`` holds; return that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.dump()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; window state:\n"
                                     + json.dumps(state, indent=1, ensure_ascii=False)
                                     + f"\nstderr:\n{self.errors()}")
            time.sleep(0.1)

    def say(self, text):
        """Type ``text`` into the entry and click Send."""
        self.call("type", text=text)
        self.call("send")

    def wait_exit(self, timeout=TIMEOUT):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the client did not exit; stderr:\n{self.errors()}")
        self._err_thread.join(5)
        return code

    def close(self):
        """Cleanup: end the process, whatever state it is in."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the driver closes the window on EOF
            except OSError:
                pass
            wait_or_kill(self.proc, 10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
