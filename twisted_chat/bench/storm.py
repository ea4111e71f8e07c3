"""Evidence for issue 4: a connection storm (every client of a restarted
server reconnecting at once) is accepted and registered in full.

Run ``python -m twisted_chat.bench.storm`` (``--help`` for the knobs).

A fresh ``twistd chat`` with its default limits (``--max-clients 10000``,
``--listen-backlog 10000``) except ``--max-per-ip 0`` (every client here comes
from 127.0.0.1). ``--clients`` connections are opened at once, spread over
``--workers`` processes (each raises its own open-file limit); each sends
``/join`` the moment it connects and counts as registered when the server
answers with the room's names. Rooms hold ``--room-size`` clients each.
The server starts with an open-file soft limit of 1024 (``--server-soft-limit``)
and must raise it itself. With ``--shutdown`` the server then gets SIGTERM
and every client must receive its ``bye`` and see its connection close.
Reports how many were accepted (welcome), registered
(names), refused, and how long the storm took, plus the server's peak RSS and
its open-file limits.
"""

import argparse
import multiprocessing
import selectors
import signal
import socket
import time

from .servers import OurServer, raise_fd_limit, twistd_command


class StormServer(OurServer):
    """``twistd chat`` with no ``backlog=`` in its endpoint (--listen-backlog
    applies), started with a low open-file soft limit (as a login shell would
    give it) so that the server's own raise at start is what lets it cope."""

    soft_limit = 1024

    def command(self):
        cmd = twistd_command() + ["-n", "--pidfile=", "chat",
                                  "--port", "tcp:0:interface=127.0.0.1"] + self.extra_args
        if not self.soft_limit:
            return cmd
        script = f'ulimit -Sn {int(self.soft_limit)} 2>/dev/null; exec "$@"'
        return ["sh", "-c", script, "twistd"] + cmd

    slow = refused = 0

    def log_line(self, line):
        self.slow += "slow consumer" in line
        self.refused += "] refused " in line


def _worker(port, first, count, room_size, timeout, go, result, shutdown):
    """Open ``count`` connections at once; report (accepted, registered, refused, failed).
    With ``shutdown``, then read until every connection has its bye and EOF."""
    limit = raise_fd_limit()
    sel = selectors.EpollSelector()
    state = {}
    go.wait()
    started = time.monotonic()
    for i in range(first, first + count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        room = f"storm{i // room_size}" if room_size else "lobby"
        state[s] = {"room": room.encode(), "buf": b"", "welcome": False, "names": False,
                    "sent": False}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    accepted = registered = refused = failed = 0
    pending = len(state)
    deadline = started + timeout
    last = started
    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=1.0):
            s, st = key.fileobj, state[key.fileobj]
            if events & selectors.EVENT_WRITE and not st["sent"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    pending -= 1
                    sel.unregister(s)
                    continue
                s.send(b"/join " + st["room"] + b"\r\n")
                st["sent"] = True
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                failed += 1
                pending -= 1
                sel.unregister(s)
                continue
            st["buf"] += data
            if not st["welcome"] and b"-- welcome to" in st["buf"]:
                st["welcome"] = True
                accepted += 1
            if st["buf"].startswith(b"!! "):
                refused += 1
                pending -= 1
                sel.unregister(s)
                continue
            if not st["names"] and b"-- in #" + st["room"] + b":" in st["buf"]:
                st["names"] = True
                registered += 1
                pending -= 1
                last = time.monotonic()
                sel.modify(s, selectors.EVENT_READ)  # keep draining (later joins)
            if st["names"]:
                st["buf"] = b""
    result.put((accepted, registered, refused, failed, pending, last - started, limit))
    if shutdown:
        result.put(_await_bye(sel, state, timeout))
    else:
        time.sleep(0.5)  # hold the connections a moment, then leave
    for s in state:
        s.close()


def _await_bye(sel, state, timeout):
    """Read every open connection to EOF; count the shutdown byes.
    Returns (byes, eofs, CLOCK_MONOTONIC time of the last EOF)."""
    open_socks = {s for s, st in state.items() if st["names"]}
    for s, st in state.items():
        st["buf"] = b""
    byes = eofs = 0
    last = 0.0
    deadline = time.monotonic() + timeout
    while open_socks and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            if s not in open_socks:
                continue
            st = state[s]
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                st["buf"] = (st["buf"] + data)[-200:]
                continue
            if b"-- bye: server shutting down\r\n" in st["buf"]:
                byes += 1
            eofs += 1
            last = time.monotonic()
            open_socks.discard(s)
            sel.unregister(s)
    return byes, eofs, last


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m twisted_chat.bench.storm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--room-size", type=int, default=100,
                    help="clients per room (0: everybody in the default room)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--shutdown", action="store_true",
                    help="then SIGTERM the server and time every client's bye and close")
    ap.add_argument("--server-soft-limit", type=int, default=1024,
                    help="open-file soft limit the server starts with (0: the hard limit)")
    ap.add_argument("server_args", nargs="*", help="extra twistd chat options (after --)")
    args = ap.parse_args(argv)

    server = StormServer(["--max-per-ip", "0"] + args.server_args)
    server.soft_limit = args.server_soft_limit
    server.start()
    try:
        time.sleep(0.5)
        rss_before = server.status("VmRSS")
        ctx = multiprocessing.get_context("fork")
        go, result = ctx.Event(), ctx.Queue()
        share = -(-args.clients // args.workers)
        procs = []
        for w in range(args.workers):
            first = w * share
            count = min(share, args.clients - first)
            if count <= 0:
                break
            p = ctx.Process(target=_worker, args=(server.port, first, count, args.room_size,
                                                  args.timeout, go, result, args.shutdown))
            p.start()
            procs.append(p)
        time.sleep(1.0)  # workers are up and waiting
        started = time.monotonic()
        go.set()
        totals = [0, 0, 0, 0, 0]
        slowest = 0.0
        limits = []
        for _ in procs:
            a, r, ref, f, pend, took, limit = result.get(timeout=args.timeout + 30)
            for i, v in enumerate((a, r, ref, f, pend)):
                totals[i] += v
            slowest = max(slowest, took)
            limits.append(limit)
        wall = time.monotonic() - started
        hwm = server.status("VmHWM")
        with open(f"/proc/{server.pid}/limits") as f:
            fd_line = [line for line in f if line.startswith("Max open files")]
        if args.shutdown:
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            byes = eofs = 0
            last_eof = stopped
            for _ in procs:
                b, e, t = result.get(timeout=args.timeout + 30)
                byes, eofs, last_eof = byes + b, eofs + e, max(last_eof, t)
            server.proc.wait(args.timeout)
            exited = time.monotonic()
        for p in procs:
            p.join(30)
        accepted, registered, refused, failed, pending = totals
        print(f"storm: {args.clients} clients over {len(procs)} workers "
              f"(client fd limit {min(limits)}), rooms of {args.room_size or 'everybody'}")
        print(f"  accepted {accepted}, registered {registered}, refused {refused}, "
              f"failed {failed}, unfinished {pending}")
        print(f"  last registration {slowest:.1f} s after the storm began (wall {wall:.1f} s)")
        print(f"  server RSS before {rss_before / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
        print(f"  server log: {server.slow} slow consumers cut off, {server.refused} refused")
        for line in fd_line:
            print("  server", " ".join(line.split()))
        if args.shutdown:
            print(f"  SIGTERM: {byes} of {registered} got 'bye: server shutting down', "
                  f"{eofs} closed; last close {last_eof - stopped:.1f} s, "
                  f"server exited {exited - stopped:.1f} s after the signal")
        ok = registered == args.clients
        if args.shutdown:
            ok = ok and byes == registered
        return 0 if ok else 1
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
