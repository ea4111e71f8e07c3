"""Where a cross-server delivery's time goes: stage timestamps of each
message, for the cluster benchmark (``--trace``); a debugging aid, off
unless ``CHAT_CLUSTER_TRACE`` names a directory in a server's environment.

Then each server (:class:`~.store.ClusterStore`) writes ``DIR/SERVER.trace``,
one line a message and stage: ``STAGE MICROSECONDS ID``, the time on
CLOCK_MONOTONIC (``time.monotonic``), which every process of the machine
shares, so the lines of two servers and the load generator's send stamps
compare. The stages:

``commit``  this server's message is committed (the store's ``done``); the
            line also carries the send stamp the benchmark puts at the end
            of the text (`` T<16 digits>``), if any;
``publish`` it is handed to the Redis connection (with the turn's others);
``heard``   another server's message arrives from Redis;
``out``     it is let out in id order (:mod:`.sequence`) to the fan-out.

:func:`summary` reads the files of one run and gives the median of each
step (the fan-out itself and the reading of the load generator come after
``out``: the benchmark's latency samples say how long the whole took).
"""

import glob
import os
import re
import time

ENV = "CHAT_CLUSTER_TRACE"
_STAMP = re.compile(r" T(\d{16})$")


class Trace:
    """One server's trace file."""

    def __init__(self, directory: str, server_id: str):
        self.file = open(os.path.join(directory, f"{server_id}.trace"), "a")

    @classmethod
    def from_environment(cls, server_id: str):
        """A Trace if ``CHAT_CLUSTER_TRACE`` is set, else None."""
        directory = os.environ.get(ENV)
        return cls(directory, server_id) if directory else None

    def mark(self, stage: str, ids, text: str = None) -> None:
        now = time.monotonic_ns() // 1000
        stamp = ""
        if text is not None:
            m = _STAMP.search(text)
            stamp = f" {int(m.group(1))}" if m else ""
        self.file.write("".join(f"{stage} {now} {i}{stamp}\n" for i in ids))

    def close(self) -> None:
        self.file.close()


def read(directory: str):
    """{server: {stage: {id: (µs, stamp or None)}}} of every trace file there."""
    servers = {}
    for path in glob.glob(os.path.join(directory, "*.trace")):
        stages = servers[os.path.basename(path)[:-len(".trace")]] = {}
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                stamp = int(parts[3]) if len(parts) > 3 else None
                stages.setdefault(parts[0], {}).setdefault(int(parts[2]),
                                                           (int(parts[1]), stamp))
    return servers


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] / 1000.0 if values else float("nan")


def summary(*directories: str):
    """Median milliseconds of each step of the messages the files show
    (committed on one server, heard on another), as ``[(step, ms, n)]``;
    of several directories (one a run: message ids start again in each),
    the median over all their messages."""
    steps = {}

    def add(step, value):
        steps.setdefault(step, []).append(value)

    for directory in directories:
        _steps(read(directory), add)
    return [(step, _median(values), len(values)) for step, values in steps.items()]


def _steps(servers, add):
    for origin, stages in servers.items():
        for msg_id, (committed, stamp) in stages.get("commit", {}).items():
            if stamp is not None:
                add("send -> commit (sender's server)", committed - stamp)
            published = stages.get("publish", {}).get(msg_id)
            if published:
                add("commit -> publish (sender's server)", published[0] - committed)
            out = stages.get("out", {}).get(msg_id)
            if out:
                add("commit -> out in id order (sender's server)", out[0] - committed)
            for other, theirs in servers.items():
                if other == origin or msg_id not in theirs.get("heard", {}):
                    continue
                heard = theirs["heard"][msg_id][0]
                if published:
                    add("publish -> heard (Redis, the other server's reading)",
                        heard - published[0])
                far_out = theirs.get("out", {}).get(msg_id)
                if far_out:
                    add("heard -> out in id order (other server)", far_out[0] - heard)
                    add("commit -> out in id order (other server)", far_out[0] - committed)
