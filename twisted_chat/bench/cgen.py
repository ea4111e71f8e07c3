"""The optional C load generator: compile ``cgen.c`` on demand and drive it.

:class:`CLoadGenerator` has the same interface as
:class:`twisted_chat.bench.loadgen.LoadGenerator` (connect, settle, run,
close) and the same members, wire format and phases, but one single-threaded
C process holds every connection, so the generator's own CPU no longer
dominates the latency it measures. It needs a C compiler (``cc``, or ``$CC``);
:func:`compiler` says whether there is one.
"""

import array
import json
import os
import shutil
import subprocess
import tempfile

from ..procs import wait_or_kill

FACES = ("line", "irc", "ws")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cgen.c")


class CompilerMissing(RuntimeError):
    """No C compiler to build the C load generator with."""


def compiler():
    """The C compiler's path, or None."""
    return shutil.which(os.environ.get("CC", "cc"))


def build(directory):
    """Compile cgen.c with ``cc -O2`` into ``directory``; return the binary's path."""
    cc = compiler()
    if cc is None:
        raise CompilerMissing("no C compiler (cc, or $CC) on PATH")
    binary = os.path.join(directory, "cgen")
    result = subprocess.run([cc, "-O2", "-o", binary, SOURCE],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode:
        raise CompilerMissing("cc failed to build cgen.c:\n"
                              + result.stdout.decode("utf-8", "replace"))
    return binary


class CLoadGenerator:
    """``members`` connections, ``senders`` of them sending, in one C process.

    ``workers`` is accepted for interface compatibility and ignored (one
    process). ``rooms=(ROOMS, PER)``: every member joins PER of ROOMS rooms
    and senders ``/say`` to theirs in turn (see ``cgen.c``). By default every receiver is read all along and samples every
    delivery (``probes`` is ignored); with ``defer=True`` only ``probes``
    receivers are read (and sampled) while messages are sent, the rest once
    the last one is sent (still counted exactly), so that the generator's
    reading does not compete with the server for the CPU meanwhile.
    ``face``: what the members speak, ``line`` (the line protocol), ``irc``
    or ``ws`` (WebSocket, JSON mode); see ``cgen.c``.
    """

    def __init__(self, members, senders, workers=1, probes=16, defer=False, rooms=None,
                 face="line"):
        if face not in FACES:
            raise ValueError(f"unknown face {face!r}")
        if rooms and face != "line":
            raise ValueError("rooms: line face only")
        self.members = members
        self.probes = max(1, probes) if defer else 0
        self.dir = tempfile.mkdtemp(prefix="chat-cgen-")
        try:
            binary = build(self.dir)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.samples_path = os.path.join(self.dir, "samples.bin")
        # rooms: (ROOMS, PER): each member in PER of ROOMS rooms (see cgen.c)
        extra = [str(n) for n in rooms] if rooms else []
        self.proc = subprocess.Popen([binary, "-f", face, str(members), str(senders)] + extra,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _call(self, line):
        self.proc.stdin.write(line.encode("ascii") + b"\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the C load generator exited (status {self.proc.poll()})")
        result = json.loads(answer)
        if "error" in result:
            raise RuntimeError(f"the C load generator: {result['error']} ({line!r})")
        return result

    def connect(self, port, rate=2000.0, register=True, timeout=60.0):
        return self._call(f"connect {int(port)} {float(rate)} {int(bool(register))} "
                          f"{float(timeout)}")

    def settle(self, quiet=1.5, timeout=60.0):
        return self._call(f"settle {float(quiet)} {float(timeout)}")["seconds"]

    def run(self, rate, duration, pad=32, drain_quiet=0.5, drain_max=5.0):
        """Offer ``rate`` messages/s for ``duration`` s; the raw measurements, as LoadGenerator."""
        r = self._call(f"run {float(rate)} {float(duration)} {int(pad)} {float(drain_quiet)} "
                       f"{float(drain_max)} {self.probes} {self.samples_path}")
        samples = array.array("q")
        with open(self.samples_path, "rb") as f:
            samples.frombytes(f.read())
        if len(samples) != r["samples"]:
            raise RuntimeError("the C load generator's sample file is short")
        r["samples"] = samples
        return r

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            wait_or_kill(self.proc, 10)
            self.proc.stdout.close()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
