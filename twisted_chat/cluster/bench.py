"""``python -m twisted_chat.cluster.bench``: one room's members split over
two servers of a cluster, against one server alone, in the same run.

Both set-ups use the same throwaway PostgreSQL (:mod:`..history.pgtemp`,
a fresh database each) and the load generator of
:mod:`twisted_chat.bench.loadgen` with two worker processes, each holding
half of the members. Alone: both workers on one server (``--db
postgresql://...``). Cluster: worker 0 on server A, worker 1 on server B
(``--redis`` on a throwaway Redis, :mod:`.redistemp`). The senders are all
worker 0's, so worker 0's probes measure delivery on the sender's server and
worker 1's a cross-server delivery; the difference of their p50 is what the
cluster adds.
"""

import argparse
import array
import sys
import time

from ..bench.cli import percentile
from ..bench.loadgen import LoadGenerator
from ..bench.servers import OurServer, raise_fd_limit
from ..history.pgtemp import PostgresServer, why_not as pg_why_not
from .redistemp import RedisServer, why_not as redis_why_not


class SplitGenerator(LoadGenerator):
    """Two workers; the senders are worker 0's members only."""

    def __init__(self, members, senders, probes=16):
        super().__init__(members, senders, workers=2, probes=probes)
        first, second = self.shares[0][0], self.shares[1][0]
        step = max(1, len(first) // senders)
        self.shares = [(first, first[::step][:senders]), (second, [])]
        self.nsenders = len(self.shares[0][1])

    def connect_to(self, ports, rate=2000.0, timeout=120.0):
        results = self._all("connect", [
            dict(port=port, indices=indices, senders=mine, probes=self.probes_per_worker,
                 rate=rate / 2, register=True, timeout=timeout)
            for port, (indices, mine) in zip(ports, self.shares)])
        return sum(r["registered"] for r in results), max(r["seconds"] for r in results)

    def run_each(self, rate, duration, pad=32):
        """Per worker: (sent, received, receivers, latency samples in µs)."""
        t0 = time.monotonic() + 0.2
        results = self._all("run", [
            dict(t0=t0, rate=rate if mine else 0.0, duration=duration, drain_quiet=1.0,
                 drain_max=5.0, pad=pad) for _, mine in self.shares])
        out = []
        for r in results:
            samples = array.array("q")
            samples.frombytes(r["samples"])
            out.append((r["sent"], r["received"], r["receivers"], sorted(samples)))
        return out


def ms(samples, q):
    return percentile(samples, q) / 1000.0


def run(setup, ports, args, out):
    gen = SplitGenerator(args.members, args.senders, probes=args.probes)
    try:
        registered, seconds = gen.connect_to(ports, rate=args.connect_rate)
        out(f"{setup}: {registered}/{args.members} members registered in {seconds:.1f} s")
        if registered != args.members:
            raise SystemExit(f"{setup}: not every member registered")
        gen.settle(quiet=1.5, timeout=120)
        (sent, got0, n0, s0), (_, got1, n1, s1) = gen.run_each(args.rate, args.duration)
        expected = sent * (n0 - 1) + sent * n1
        every = sorted(s0 + s1)
        result = dict(sent=sent, delivered=got0 + got1, expected=expected,
                      p50=ms(every, 50), p99=ms(every, 99), p50_local=ms(s0, 50),
                      p99_local=ms(s0, 99), p50_far=ms(s1, 50), p99_far=ms(s1, 99))
        out(f"{setup}: {sent} msgs at {args.rate:g}/s, {result['delivered']}/{expected} "
            f"delivered; p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms; "
            f"sender's server p50/p99 {result['p50_local']:.1f}/{result['p99_local']:.1f} ms, "
            f"other server {result['p50_far']:.1f}/{result['p99_far']:.1f} ms")
        return result
    finally:
        gen.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m twisted_chat.cluster.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=10000, help="members of the room (10000)")
    p.add_argument("--senders", type=int, default=10, help="senders, all on server A (10)")
    p.add_argument("--rate", type=float, default=10.0, help="messages/s (10)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of sending (5)")
    p.add_argument("--probes", type=int, default=16, help="latency probes, both workers")
    p.add_argument("--connect-rate", type=float, default=1000.0, help="connections/s")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for every twistd chat (repeatable)")
    args = p.parse_args(argv)
    for why in (pg_why_not(), redis_why_not()):
        if why:
            raise SystemExit(why)
    raise_fd_limit()

    def out(line):
        print(line, flush=True)

    pg = PostgresServer().start()
    redis = RedisServer().start()
    servers = []
    results = {}
    try:
        alone = OurServer(["--db", pg.create_database(), *args.server_arg]).start()
        servers.append(alone)
        results["alone"] = run("alone", [alone.port, alone.port], args, out)
        alone.stop()
        url = pg.create_database()
        cluster = [OurServer(["--db", url, "--redis", redis.endpoint, *args.server_arg]).start()
                   for _ in range(2)]
        servers += cluster
        time.sleep(1.0)  # both subscribed
        results["cluster"] = run("cluster", [s.port for s in cluster], args, out)
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception:
                pass
        redis.destroy()
        pg.destroy()
    a, c = results["alone"], results["cluster"]
    out(f"p99: cluster {c['p99']:.1f} ms vs alone {a['p99']:.1f} ms "
        f"({'ok' if c['p99'] <= a['p99'] else 'above'}); cross-server extra p50 "
        f"{c['p50_far'] - c['p50_local']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
