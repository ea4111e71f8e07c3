"""Benchmark of the message history (issue 5): ``python -m twisted_chat.history.bench``.

Two measurements, each a ratio or a rate taken in the same run (the machine is
shared; absolute numbers move, ratios much less):

``store``   The SQLite store alone, in this process, on a real file: a real
            reactor, the real writer thread, group commit. Each reactor turn
            appends a burst of messages (as the hub does when many lines
            arrive in one turn); the figure is messages whose ``done`` ran
            (i.e. committed, fsync included) per second.

``fanout``  A real server process per mode, one room of ``--members`` readers
            and one sender flooding ``--messages`` text lines as fast as the
            server reads them; the figure is lines delivered to the readers
            per second, with the history on (an SQLite file) and off (no
            store at all: the hub's MemoryHistory), alternating ``--rounds``
            times. ``--turn`` adds a third server whose store keeps nothing
            but acknowledges at the end of the turn, as the real one does
            after its commit: it separates the cost of the asynchronous
            pipeline in the hub from the cost of SQLite. The server is ``twistd chat``'s own makeService, so every
            other feature is as in production (rate limits lifted).
"""

import argparse
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


# -- store -------------------------------------------------------------------

def store_run(total: int, burst: int, text_size: int, out) -> float:
    from twisted.internet import reactor

    from .interface import room_message
    from .sqlite import SQLiteHistory

    directory = tempfile.mkdtemp(prefix="chat-bench-")
    store = SQLiteHistory(os.path.join(directory, "bench.sqlite"), clock=reactor)
    store.startService()
    text = "x" * text_size
    state = {"sent": 0, "done": 0, "last": 0}
    window = 20 * burst  # keep a few batches in flight, like a busy server

    def done(msg_id):
        state["done"] += 1
        state["last"] = msg_id

    def turn():
        # One reactor turn's worth of accepted messages.
        if state["sent"] < total and state["sent"] - state["done"] < window:
            t = time.time()
            for _ in range(min(burst, total - state["sent"])):
                store.append(room_message("lobby", "lobby", "bench", text, t), done)
                state["sent"] += 1
        if state["done"] < total:
            reactor.callLater(0, turn)
        else:
            state["took"] = time.perf_counter() - started
            # Stopped while the reactor runs: the writer process is waited for.
            store.stopService().addBoth(lambda _: reactor.stop())

    started = time.perf_counter()
    reactor.callLater(0, turn)
    reactor.run()
    took = state["took"]
    rate = total / took
    out(f"store: {total} messages of {text_size} B, {burst} per turn: {took:.2f} s, "
        f"{rate:,.0f} persisted messages/s (last id {state['last']})")
    shutil.rmtree(directory, ignore_errors=True)
    return rate


# -- fan-out -------------------------------------------------------------------

def serve(argv):
    """``bench serve on|off|turn PORTFILE``: a chat server, history on or off
    (or ``turn``: acknowledged at the end of the turn, nothing stored)."""
    mode, port_file = argv
    from twisted.internet import reactor

    from .. import tap
    from ..hub import MemoryHistory

    options = tap.Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--rate", "0",
                          "--max-per-ip", "0", "--max-backlog", str(256 << 20),
                          "--presence-threshold", "0", "--db", "bench.sqlite"])
    top = tap.makeService(options)
    if mode == "off":
        top.factory.hub.history = MemoryHistory()
        top.store = _NoStore()
    elif mode == "turn":
        top.factory.hub.history = _TurnHistory(reactor)
        top.store = _NoStore()
    top.startService()

    def announce():
        listener = next(iter(top))
        port = listener._waitingForPort.result.getHost().port
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(port_file + ".tmp", port_file)

    reactor.callWhenRunning(announce)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


class _TurnHistory:
    """Acknowledges a turn's messages at the end of the turn; stores nothing."""

    last_id_at_start = 0

    def __init__(self, reactor):
        from ..hub import MemoryHistory

        self._memory = MemoryHistory()
        self._reactor = reactor
        self._pending = []
        self._call = None

    def append(self, record, done, failed=None):
        self._pending.append((record, done))
        if self._call is None:
            self._call = self._reactor.callLater(0, self._flush)

    def _flush(self):
        self._call = None
        pending, self._pending = self._pending, []
        for record, done in pending:
            self._memory.append(record, done)

    def recent(self, room, limit):
        return self._memory.recent(room, limit)

    def before(self, room, before_id, limit):
        return self._memory.before(room, before_id, limit)

    def page(self, room, limit, **bounds):
        return self._memory.page(room, limit, **bounds)


class _NoStore:
    def startService(self):
        pass

    def stopService(self):
        pass


def _server(mode, directory):
    port_file = os.path.join(directory, f"port-{mode}")
    if os.path.exists(port_file):
        os.remove(port_file)
    proc = subprocess.Popen([sys.executable, "-m", "twisted_chat.history.bench", "serve", mode,
                             port_file], cwd=directory, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the {mode} server did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, int(f.read())


def _connect(port, nick):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"/nick {nick}\r\n".encode())
    buf = b""
    while b"-- in lobby:" not in buf:
        buf += sock.recv(65536)
    return sock


def _cpu_seconds(pid):
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fanout_run(mode, members, messages, directory, out) -> float:
    proc, port = _server(mode, directory)
    try:
        readers = [_connect(port, f"r{i}") for i in range(members)]
        sender = _connect(port, "sender")
        time.sleep(0.3)
        for r in readers:  # drain join notices
            r.setblocking(False)
            try:
                while r.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        marker = b"<sender> m"
        counts = {r.fileno(): 0 for r in readers}
        tails = {r.fileno(): b"" for r in readers}
        by_fd = {r.fileno(): r for r in readers}
        payload = "".join(f"m{i} {'x' * 32}\r\n" for i in range(messages)).encode()
        cpu_before = _cpu_seconds(proc.pid)
        started = time.perf_counter()
        threading.Thread(target=sender.sendall, args=(payload,), daemon=True).start()
        remaining = set(counts)
        poller = select.epoll()
        for fd in counts:
            poller.register(fd, select.EPOLLIN)
        deadline = time.monotonic() + 300
        while remaining and time.monotonic() < deadline:
            for fd, _ in poller.poll(1.0):
                data = tails[fd] + by_fd[fd].recv(1 << 20)
                cut = data.rfind(b"\n") + 1
                counts[fd] += data[:cut].count(marker)
                tails[fd] = data[cut:]
                if counts[fd] >= messages:
                    remaining.discard(fd)
                    poller.unregister(fd)
        took = time.perf_counter() - started
        cpu = _cpu_seconds(proc.pid) - cpu_before
        if remaining:
            raise RuntimeError(f"{mode}: not every reader got every message")
        rate = messages * members / took
        out(f"fanout history {mode:>4}: {messages} messages x {members} readers in "
            f"{took:.2f} s = {rate:,.0f} deliveries/s ({messages / took:,.0f} messages/s); "
            f"server CPU {cpu:.2f} s")
        for s in readers + [sender]:
            s.close()
        return rate
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    p = argparse.ArgumentParser(prog="python -m twisted_chat.history.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="*", default=["store", "fanout"], help="store, fanout")
    p.add_argument("--total", type=int, default=200_000, help="store: messages (200000)")
    p.add_argument("--burst", type=int, default=500, help="store: messages per turn (500)")
    p.add_argument("--size", type=int, default=40, help="store: text bytes (40)")
    p.add_argument("--members", type=int, default=20, help="fanout: readers (20)")
    p.add_argument("--messages", type=int, default=100_000, help="fanout: messages (100000)")
    p.add_argument("--rounds", type=int, default=5, help="fanout: rounds of off+on (5)")
    p.add_argument("--turn", action="store_true",
                   help="fanout: also a server acknowledging per turn, storing nothing")
    args = p.parse_args(argv)
    if "store" in args.what:
        store_run(args.total, args.burst, args.size, print)
    if "fanout" in args.what:
        directory = tempfile.mkdtemp(prefix="chat-bench-")
        try:
            modes = ("off", "turn", "on") if args.turn else ("off", "on")
            results = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    results[mode].append(
                        fanout_run(mode, args.members, args.messages, directory, print))
            off, on = statistics.median(results["off"]), statistics.median(results["on"])
            print(f"fanout median: history off {off:,.0f}, on {on:,.0f} deliveries/s; "
                  f"on/off = {on / off:.3f}")
            # Each round's servers ran back to back: the ratio within a round
            # is spared the machine's slower and faster stretches.
            ratios = [b / a for a, b in zip(results["off"], results["on"])]
            print(f"fanout on/off per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
                  f"median {statistics.median(ratios):.3f}")
            if args.turn:
                turn = statistics.median(results["turn"])
                print(f"fanout median: acknowledged per turn, nothing stored {turn:,.0f} "
                      f"deliveries/s; turn/off = {turn / off:.3f}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
