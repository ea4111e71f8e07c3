"""Benchmark of the PostgreSQL store against the SQLite one (issue 15):
``python -m twisted_chat.history.pgbench``.

The measurement of ``python -m twisted_chat.history.bench store``, on each
store in turn: a real reactor appends bursts of messages (a busy server's
turns) and the figure is messages whose ``done`` ran (committed, with the
commit on disk) per second. The stores alternate for ``--rounds`` rounds,
each run a fresh process and a fresh database, and the report gives the
medians and the PostgreSQL/SQLite ratio of each round (the machine is
shared: ratios move less than rates). Each PostgreSQL run also reports the
CPU time of its write thread, which is an upper bound on the time it held
the GIL the reactor needs.

PostgreSQL: ``--pg URL`` (a database the benchmark may fill: it creates a
fresh one beside it per run, so the user needs CREATEDB), or by default a
throwaway cluster (:mod:`.pgtemp`, fsync on, as a real one) started for the
run and removed after it. ``--in-flight`` lists the numbers of batches
handed to the write thread at once to compare (the store's default is
:data:`.pg.MAX_IN_FLIGHT`).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run_one(kind, url, total, burst, size, in_flight):
    """In a child process: one store, one run; prints a JSON result."""
    from twisted.internet import reactor

    from .interface import room_message

    directory = tempfile.mkdtemp(prefix="chat-pgbench-")
    if kind == "sqlite":
        from .sqlite import SQLiteHistory

        store = SQLiteHistory(os.path.join(directory, "bench.sqlite"), clock=reactor)
    else:
        from . import pg

        store = pg.PostgresHistory(url, clock=reactor, max_in_flight=in_flight)
        cpu = {"write": 0.0}
        write_batch = pg.OPERATIONS["write"]

        def timed(conn, rows):
            started = time.thread_time()
            try:
                return write_batch(conn, rows)
            finally:
                cpu["write"] += time.thread_time() - started

        pg.OPERATIONS["write"] = timed
    store.startService()
    text = "x" * size
    state = {"sent": 0, "done": 0, "last": 0, "batches": 0, "blocked": False}
    window = 20 * burst

    def done(msg_id):
        state["done"] += 1
        state["last"] = msg_id
        if state["blocked"] and state["sent"] - state["done"] < window:
            state["blocked"] = False
            reactor.callLater(0, turn)
        elif state["done"] == total:
            state["took"] = time.perf_counter() - started
            store.stopService().addBoth(lambda _: reactor.stop())

    def turn():
        # One reactor turn's worth of accepted messages, then the next turn;
        # with a full window of messages waiting for their commit, the
        # reactor sleeps (as a server's does) until the commits come back.
        if state["sent"] - state["done"] >= window:
            state["blocked"] = True
            return
        t = time.time()
        for _ in range(min(burst, total - state["sent"])):
            store.append(room_message("lobby", "lobby", "bench", text, t), done)
            state["sent"] += 1
        if state["sent"] < total:
            reactor.callLater(0, turn)

    def batch(seconds, count):
        state["batches"] += 1

    store.observe_batch = batch
    started = time.perf_counter()
    process_cpu = time.process_time()
    reactor.callLater(0, turn)
    reactor.run()
    result = {"rate": total / state["took"], "batches": state["batches"],
              "last": state["last"], "cpu": time.process_time() - process_cpu}
    if kind == "pg":
        result["write_cpu"] = cpu["write"]
    shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))
    return 0


def _child(kind, url, args, in_flight):
    cmd = [sys.executable, "-m", "twisted_chat.history.pgbench", "--child", kind,
           "--total", str(args.total), "--burst", str(args.burst), "--size", str(args.size),
           "--in-flight", str(in_flight)]
    if url:
        cmd += ["--pg", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m twisted_chat.history.pgbench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pg", help="postgresql:// URL (default: a throwaway cluster)")
    p.add_argument("--total", type=int, default=100_000, help="messages per run (100000)")
    p.add_argument("--burst", type=int, default=500, help="messages per turn (500)")
    p.add_argument("--size", type=int, default=40, help="text bytes (40)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of sqlite + pg (3)")
    p.add_argument("--in-flight", default=None,
                   help="comma-separated batches in flight to compare (default: the store's)")
    p.add_argument("--child", choices=("sqlite", "pg"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_one(args.child, args.pg, args.total, args.burst, args.size,
                       int(args.in_flight))
    from . import pg

    flights = [int(n) for n in (args.in_flight or str(pg.MAX_IN_FLIGHT)).split(",")]
    server = None
    base = args.pg
    if base is None:
        from .pgtemp import PostgresServer, why_not

        reason = why_not()
        if reason:
            p.error(f"no throwaway PostgreSQL: {reason}; give --pg URL")
        server = PostgresServer(fsync=True).start()
        base = server.url()
    import psycopg

    def fresh_database(n):
        name = f"chat_bench_{os.getpid()}_{n}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return base.rsplit("/", 1)[0] + "/" + name

    try:
        print(f"{args.total} messages of {args.size} B, {args.burst} per turn, "
              f"{args.rounds} rounds; PostgreSQL: "
              f"{'a throwaway cluster (fsync on)' if server else pg.describe(base)}")
        results = {"sqlite": []}
        results.update({f: [] for f in flights})
        runs = 0
        for _ in range(args.rounds):
            r = _child("sqlite", None, args, 0)
            results["sqlite"].append(r)
            print(f"  sqlite: {r['rate']:,.0f} messages/s, {r['batches']} batches")
            for flight in flights:
                runs += 1
                url = fresh_database(runs)
                try:
                    r = _child("pg", url, args, flight)
                finally:
                    with psycopg.connect(base, autocommit=True) as conn:
                        conn.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
                results[flight].append(r)
                print(f"  pg (in flight {flight}): {r['rate']:,.0f} messages/s, "
                      f"{r['batches']} batches, write thread CPU "
                      f"{r['write_cpu'] * 1e6 / args.total:.1f} us/message of "
                      f"{r['cpu'] * 1e6 / args.total:.1f} us/message in all")
        sqlite = statistics.median(r["rate"] for r in results["sqlite"])
        print(f"median: sqlite {sqlite:,.0f} committed messages/s")
        for flight in flights:
            rates = [r["rate"] for r in results[flight]]
            ratios = [b["rate"] / a["rate"] for a, b in zip(results["sqlite"], results[flight])]
            print(f"median: pg (in flight {flight}) {statistics.median(rates):,.0f} committed "
                  f"messages/s; pg/sqlite per round {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"median {statistics.median(ratios):.2f}")
    finally:
        if server is not None:
            server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
