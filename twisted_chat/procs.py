"""Ending a child process for good: ask it to stop, give it time, then kill it.

The tests and the benchmarks start real programs (``twistd chat``,
``redis-server``, Xvfb, the C load generator, the failover front) as
:class:`subprocess.Popen` children and must never leave one running. The
standard library stops short of this: ``Popen.terminate()`` only sends the
signal, ``Popen.wait(timeout)`` raises ``TimeoutExpired`` and leaves the
child running, and ``Popen``'s ``with`` block waits without a limit.
Twisted's process support is the reactor's (``spawnProcess``), and these
callers run no reactor.
"""

import signal
import subprocess


def wait_or_kill(proc, timeout):
    """Wait up to ``timeout`` s for ``proc`` to exit, then SIGKILL it; its exit code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stop_process(proc, timeout=10, sig=signal.SIGTERM):
    """Send ``proc`` ``sig`` (SIGTERM) if it still runs, then :func:`wait_or_kill`;
    its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return wait_or_kill(proc, timeout)
