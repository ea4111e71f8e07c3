"""``python -m twisted_chat.bench``: scenarios, sweeps, the report and the plot.

Every scenario measures the server under test (``twistd -n chat``) and the
bare baseline (:mod:`twisted_chat.bench.baseline`) with the same parameters in
the same run, and reports the results as ratios to the baseline. The scenarios
of the other faces (``irc``, ``ws``...) measure the server through that face
and through the line protocol in the same run, and report the ratio of the two.
"""

import argparse
import functools
import json
import math
import sys
import time

from .cgen import CLoadGenerator, compiler
from .loadgen import LoadGenerator
from .servers import BareServer, MetricsServer, OurServer, RSSSampler, raise_fd_limit

# name: members, senders, mode (sweep from a start rate, or one fixed rate), rate (msgs/s)
SCENARIOS = {
    "100": dict(members=100, senders=10, sweep=True, rate=500.0),
    "1000": dict(members=1000, senders=50, sweep=True, rate=50.0),
    # Two generator processes: 10,000 receiving sockets are more than one
    # Python process reads in time.
    # max_p99_ms: issue 7's target for this scenario (default: MAX_P99_MS).
    # prefill: messages in the room's history before anybody joins, so that
    # every joiner gets a full replay (the server's default --history, 50),
    # as on a server that has been in use; peak memory is measured that way.
    "10k": dict(members=10000, senders=10, sweep=False, rate=10.0, workers=2, duration=5.0,
                max_p99_ms=100.0, prefill=50, max_kb_per_connection=10.0),
    # Several rooms per connection (protocol v2): 1,000 connections, each in
    # 10 of 100 rooms (100 members a room); senders /say to their rooms in
    # turn. The bare baseline knows rooms for this one (baseline.py). Needs
    # the C load generator.
    "rooms": dict(members=1000, senders=50, sweep=True, rate=500.0, rooms=(100, 10)),
    # The other faces (issues 13 and 14), each against the line protocol
    # ("ours") in the same run: the same server, every member speaking IRC
    # (an --irc listener) or WebSocket (a --web listener, /ws, JSON mode).
    # min_ratio: the face's max sustained deliveries/s over the line
    # protocol's, at least; the 10k ones have the 10k scenario's p99 target.
    "irc": dict(members=1000, senders=50, sweep=True, rate=50.0, servers=("ours", "irc"),
                min_ratio=0.8),
    "irc-10k": dict(members=10000, senders=10, sweep=False, rate=10.0, workers=2, duration=5.0,
                    max_p99_ms=100.0, prefill=50, servers=("ours", "irc")),
    "ws": dict(members=1000, senders=50, sweep=True, rate=50.0, servers=("ours", "ws"),
               min_ratio=0.8),
    "ws-10k": dict(members=10000, senders=10, sweep=False, rate=10.0, workers=2, duration=5.0,
                   max_p99_ms=100.0, prefill=50, servers=("ours", "ws")),
    # Several servers (issue 15, twisted_chat.cluster.bench): the room's
    # members split over two generator processes, both on one server
    # ("alone"), then one on each server of a cluster of two ("cluster":
    # --db on one PostgreSQL, --redis on one Redis). Targets: the cluster's
    # p99 at most the lone server's, a delivery across servers at most 5 ms
    # later (p50) than one on the sender's server, judged on the median of
    # three rounds. Skipped, saying why, where PostgreSQL or Redis cannot run.
    "cluster": dict(members=10000, senders=10, sweep=False, rate=10.0, duration=5.0,
                    cluster=True, rounds=3),
}
MAX_P99_MS = 250.0
# Servers measured by default (a scenario's "servers" says otherwise).
DEFAULT_SERVERS = ("ours", "bare")
# Faces other than the line protocol: a server of this kind is ours with a
# listener of that face, and its members speak it.
FACES = ("irc", "ws")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values))) - 1))
    return sorted_values[i]


def summarize(raw, rate, duration, cpu_server, rss_peak_kb, max_p99_ms=MAX_P99_MS):
    receivers = raw["receivers"]
    fanout = raw.get("fanout", receivers)  # members of the room a message goes to
    # A message reaches every member of its room but its sender, and the
    # sender too where the face echoes it (JSON mode: WebSocket).
    echo = raw.get("echo", 0)
    expected = raw["sent"] * max(fanout - 1 + echo, 0)
    lat = sorted(raw["samples"])
    ms = [percentile(lat, q) / 1000.0 for q in (50, 90, 99, 100)]
    window = max(duration, raw["wall"] - 0.5)
    step = {
        "rate": rate,
        "offered": rate * max(fanout - 1 + echo, 0),
        "sent": raw["sent"],
        "expected": expected,
        "delivered": raw["received"],
        "delivery": raw["received"] / expected if expected else 0.0,
        "deliveries_per_s": raw["received"] / window,
        "p50_ms": ms[0], "p90_ms": ms[1], "p99_ms": ms[2], "max_ms": ms[3],
        "samples": len(lat),
        "server_cpu": cpu_server / window,
        "generator_cpu": raw["cpu"] / window,
        "rss_peak_kb": rss_peak_kb,
        "errors": raw["errors"],
    }
    step["ok"] = bool(expected) and raw["received"] >= expected and ms[2] <= max_p99_ms
    return step


def fmt_step(kind, s):
    return (f"  {kind:>7} {s['rate']:9.0f} msg/s  offered {s['offered'] / 1e6:6.3f} M/s  "
            f"delivered {100 * s['delivery']:6.2f}%  {s['deliveries_per_s'] / 1e6:6.3f} M/s  "
            f"p50/p90/p99/max {s['p50_ms']:6.1f}/{s['p90_ms']:6.1f}/{s['p99_ms']:6.1f}/"
            f"{s['max_ms']:6.1f} ms  cpu srv {100 * s['server_cpu']:3.0f}% "
            f"gen {100 * s['generator_cpu']:3.0f}%  rss {s['rss_peak_kb'] / 1024:5.0f} MB"
            f"{'' if s['ok'] else '  FAIL'}")


class Subject:
    """One server under measurement, with its own members (a LoadGenerator)."""

    def __init__(self, kind, sc, args, out):
        self.kind, self.sc, self.args, self.out = kind, sc, args, out
        self.server = self.gen = None
        self.result = {"server": kind, "steps": []}
        self.retries = args.retries
        self.refinements = args.refine
        self.lost = False
        self.passed = self.failed = None  # sweep: best rate passed, lowest failed
        self.active = False

    def setup(self):
        kind, sc, args = self.kind, self.sc, self.args
        prefill = args.prefill if args.prefill is not None else sc.get("prefill", 0)
        if kind == "ours":
            server = OurServer(args.server_arg, prefill=prefill)
        elif kind in FACES:
            server = OurServer(args.server_arg, prefill=prefill, face=kind)
        elif kind == "metrics":
            server = MetricsServer(args.server_arg, prefill=prefill)
        else:
            server = BareServer()
        server = self.server = server.start()
        rss_empty = server.status("VmRSS") or 0
        rooms = {"rooms": sc["rooms"]} if sc.get("rooms") else {}
        face = {"face": kind} if kind in FACES else {}
        gen = self.gen = args.generator_class(sc["members"], sc["senders"],
                                       workers=args.workers or sc.get("workers", 1),
                                       probes=args.probes, **rooms, **face)
        with RSSSampler(server) as sampler:
            conn = gen.connect(server.port, rate=args.connect_rate,
                               register=(kind != "bare" or bool(rooms)),
                               timeout=args.connect_timeout)
        gen.settle(timeout=args.connect_timeout)
        rss_idle = server.status("VmRSS") or 0
        self.result.update(
            prefill=prefill if kind != "bare" else 0,
            connect_seconds=conn["seconds"], registered=conn["registered"],
            connect_errors=conn["errors"], rss_empty_kb=rss_empty, rss_idle_kb=rss_idle,
            rss_connect_peak_kb=sampler.peak,
            kb_per_idle_connection=(rss_idle - rss_empty) / max(conn["registered"], 1),
        )
        self.out(f"  {kind:>7} connect: {conn['registered']}/{sc['members']} registered in "
                 f"{conn['seconds']:.2f} s at {args.connect_rate:.0f}/s offered; "
                 f"idle RSS {rss_idle / 1024:.0f} MB "
                 f"({self.result['kb_per_idle_connection']:.1f} KB per connection)")
        self.active = conn["registered"] == sc["members"]
        if not self.active:
            self.out(f"  {kind:>7} not every member registered; skipping its runs")

    def step(self, rate, duration):
        """One step at ``rate``; False once this server's sweep is over."""
        server, gen, sc = self.server, self.gen, self.sc
        while True:
            cpu0 = server.cpu_seconds()
            with RSSSampler(server) as sampler:
                raw = gen.run(rate, duration, pad=self.args.pad)
            step = summarize(raw, rate, duration, server.cpu_seconds() - cpu0, sampler.peak,
                             sc.get("max_p99_ms", MAX_P99_MS))
            self.out(fmt_step(self.kind, step))
            gen.settle(quiet=0.3, timeout=10)
            if not step["ok"] and sc["sweep"] and self.retries > 0:
                self.retries -= 1  # a shared machine has hiccups
                continue
            break
        self.result["steps"].append(step)
        self.peak_memory()
        self.active = sc["sweep"] and step["ok"]
        # Members the server cut (the generator fell --max-backlog behind
        # in an overloaded step, as a slow client would) or that closed.
        self.lost = raw["errors"] > 0 or raw["receivers"] < self.sc["members"] - 1
        if sc["sweep"]:
            self.note(rate, step["ok"])
        return self.active

    def note(self, rate, ok):
        """A sweep's step at ``rate`` passed or failed (after its retries)."""
        if ok:
            self.passed = max(self.passed or 0.0, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)

    def refining(self):
        """The next rate to try between the best step that passed and the
        lowest that failed, or None."""
        if self.refinements <= 0 or not self.passed or self.failed is None \
                or self.failed <= self.passed:
            return None
        return math.sqrt(self.passed * self.failed)

    def restart(self):
        """A fresh server and generator, for more steps after one lost
        members; the first connect's figures and the peak memory stay."""
        why = (" (it cut members in its last step: an overloaded generator falls "
               "--max-backlog behind, as a slow client would)" if self.lost else "")
        self.out(f"  {self.kind:>7} a fresh server and members{why}")
        self.peak_memory()
        kept = {k: v for k, v in self.result.items() if k != "steps"}
        self.gen.close()
        self.server.stop()
        self.gen = self.server = None
        self.setup()
        self.peak_memory()
        hwm = max(kept.get("rss_hwm_kb", 0), self.result.get("rss_hwm_kb", 0))
        self.result.update(kept)
        if hwm:
            self.result["rss_hwm_kb"] = hwm
            self.result["kb_per_connection_hwm"] = hwm / max(self.sc["members"], 1)
        self.lost = False

    def peak_memory(self):
        """The server's peak RSS so far (VmHWM), and per connection."""
        hwm = self.server.status("VmHWM")
        if hwm:
            self.result["rss_hwm_kb"] = hwm
            self.result["kb_per_connection_hwm"] = hwm / max(self.sc["members"], 1)

    def close(self):
        if self.server is not None:
            self.peak_memory()  # the steps are over, the server still runs
        if self.gen is not None:
            self.gen.close()
        if self.server is not None:
            self.server.stop()
            if isinstance(self.server, MetricsServer):
                self.result["scrapes"] = self.server.scrapes


def measure(kinds, sc, args, out):
    """Both servers up and connected, then the steps interleaved: at each rate
    one step on each, so that a noisy stretch of the machine hits both."""
    subjects = [Subject(kind, sc, args, out) for kind in kinds]
    try:
        for subject in subjects:
            subject.setup()
        rate = sc["rate"]
        duration = args.duration or sc.get("duration", 2.0)
        while any(s.active for s in subjects):
            for subject in subjects:
                if subject.active:
                    subject.step(rate, duration)
            if rate >= args.max_rate:
                break
            rate *= args.factor
        # A sweep's steps are --factor apart, and so is the max sustained
        # rate of each server, and the ratio of two: bisect (geometrically)
        # each server's last interval, still one step on each in turn.
        while True:
            todo = [(s, s.refining()) for s in subjects]
            todo = [(s, r) for s, r in todo if r is not None]
            if not todo:
                break
            for subject, rate in todo:
                subject.refinements -= 1
                # Each from a fresh server and members, as the sweep's steps
                # were: not one still digesting the overloaded step before
                # (or whose members it cut).
                subject.restart()
                if not subject.active:
                    subject.refinements = 0
                    continue
                subject.step(rate, duration)
        for subject in subjects:
            subject.result["steps"].sort(key=lambda s: s["rate"])
    finally:
        for subject in subjects:
            subject.close()
    return {s.kind: s.result for s in subjects}


def max_sustained(result):
    ok = [s for s in result["steps"] if s["ok"]]
    return max((s["deliveries_per_s"] for s in ok), default=0.0), \
        max((s["rate"] for s in ok), default=0.0)


def ratio(a, b):
    return a / b if b else float("inf")


def cpu_per_delivery(result, passed_only=True):
    """Server CPU seconds per million deliveries, over the steps that passed
    (or over every step)."""
    steps = [s for s in result["steps"]
             if s["deliveries_per_s"] and (s["ok"] or not passed_only)]
    if not steps:
        return float("nan")
    return 1e6 * sum(s["server_cpu"] / s["deliveries_per_s"] for s in steps) / len(steps)


def report_metrics(sc, ours, on, out):
    """Metrics on vs off (``--servers ours,metrics``): the cost of counting."""
    if not (ours and on and ours["steps"] and on["steps"]):
        return
    # A sweep's steps that failed are overload; a fixed rate has one step.
    for r in (ours, on):
        r["cpu_s_per_m_deliveries"] = cpu_per_delivery(r, passed_only=sc["sweep"])
    out(f"  metrics on: {on.get('scrapes', 0)} scrapes of /metrics during the run")
    if sc["sweep"]:
        out(f"  RATIO metrics-on/off max sustained deliveries/s: "
            f"{ratio(on['max_sustained_deliveries_per_s'], ours['max_sustained_deliveries_per_s']):.3f}x")
    else:
        out(f"  RATIO metrics-on/off p99: "
            f"{ratio(on['steps'][-1]['p99_ms'], ours['steps'][-1]['p99_ms']):.3f}x")
    out(f"  RATIO metrics-on/off server CPU per delivery: "
        f"{ratio(on['cpu_s_per_m_deliveries'], ours['cpu_s_per_m_deliveries']):.3f}x "
        f"({on['cpu_s_per_m_deliveries']:.3f} vs {ours['cpu_s_per_m_deliveries']:.3f} "
        f"CPU s per million deliveries{', steps that passed' if sc['sweep'] else ''})")


def report(name, sc, results, out):
    ours, bare, on = results.get("ours"), results.get("bare"), results.get("metrics")
    faces = [results[kind] for kind in FACES if kind in results]
    out(f"== scenario {name}: summary")
    if sc["sweep"]:
        for r in (ours, on, *faces, bare):
            if r:
                d, m = max_sustained(r)
                r["max_sustained_deliveries_per_s"], r["max_sustained_rate"] = d, m
                out(f"  {r['server']:>7} max sustained: {m:.0f} msgs/s = {d / 1e6:.3f} M "
                    f"deliveries/s (100% delivered, p99 <= {MAX_P99_MS:.0f} ms)")
        if ours and bare:
            out(f"  RATIO ours/bare max sustained deliveries/s: "
                f"{ratio(ours['max_sustained_deliveries_per_s'], bare['max_sustained_deliveries_per_s']):.2f}x")
        for r in faces if ours else ():
            r["ratio_to_line"] = x = ratio(r["max_sustained_deliveries_per_s"],
                                           ours["max_sustained_deliveries_per_s"])
            target = sc.get("min_ratio")
            verdict = (f" (>= {target:.1f}x: {'met' if x >= target else 'NOT met'})"
                       if target is not None else "")
            out(f"  RATIO {r['server']}/line max sustained deliveries/s: {x:.2f}x{verdict}")
    else:
        for r in (ours, on, *faces, bare):
            if r and r["steps"]:
                s = r["steps"][-1]
                limit = sc.get("max_p99_ms", MAX_P99_MS)
                out(f"  {r['server']:>7} {s['rate']:.0f} msgs/s: delivered "
                    f"{100 * s['delivery']:.2f}%, p99 {s['p99_ms']:.1f} ms "
                    f"(100% and p99 <= {limit:.0f} ms: {'met' if s['ok'] else 'NOT met'}), "
                    f"peak RSS {s['rss_peak_kb'] / 1024:.0f} MB")
        if ours and bare and ours["steps"] and bare["steps"]:
            o, b = ours["steps"][-1], bare["steps"][-1]
            out(f"  RATIO ours/bare p99: {ratio(o['p99_ms'], b['p99_ms']):.2f}x; "
                f"peak RSS: {ratio(o['rss_peak_kb'], b['rss_peak_kb']):.2f}x")
        for r in faces if ours and ours["steps"] else ():
            if r["steps"]:
                f, o = r["steps"][-1], ours["steps"][-1]
                out(f"  RATIO {r['server']}/line p99: {ratio(f['p99_ms'], o['p99_ms']):.2f}x; "
                    f"peak RSS: {ratio(f['rss_peak_kb'], o['rss_peak_kb']):.2f}x")
    report_metrics(sc, ours, on, out)
    for r in (ours, on, *faces, bare):
        if r and "connect_seconds" in r:
            out(f"  {r['server']:>7} connect {r['registered']}/{sc['members']} in "
                f"{r['connect_seconds']:.2f} s; {r['kb_per_idle_connection']:.1f} KB/idle conn")
    for r in (ours, on, *faces, bare):
        if r and "kb_per_connection_hwm" in r:
            limit = sc.get("max_kb_per_connection")
            target = ""
            if limit is not None and r["server"] == "ours":
                met = r["kb_per_connection_hwm"] <= limit
                target = f" (<= {limit:.0f} KB: {'met' if met else 'NOT met'})"
            history = (f", history replay of {r['prefill']} messages to every joiner"
                       if r.get("prefill") else "")
            out(f"  {r['server']:>7} peak memory (VmHWM) {r['rss_hwm_kb'] / 1024:.1f} MB = "
                f"{r['kb_per_connection_hwm']:.1f} KB per connection{target}{history}")


def run_cluster(name, sc, args, out):
    """The cluster scenario (:mod:`twisted_chat.cluster.bench`): alone, then
    two servers, in this run; skipped, saying why, without PostgreSQL or
    Redis. Its entry of the JSON results."""
    from ..cluster import bench as cluster_bench

    why = cluster_bench.why_not()
    if why:
        out(f"== scenario {name}: skipped: {why}")
        return dict(sc, skipped=why, results={})
    duration = args.duration or sc.get("duration", 2.0)
    results = cluster_bench.measure(
        sc["members"], sc["senders"], sc["rate"], duration,
        generator="python" if args.generator_name == "python" else "c",
        server_args=args.server_arg, out=out, probes=args.probes,
        connect_rate=args.connect_rate, rounds=args.rounds or sc.get("rounds", 1))
    generator = results.pop("generator")
    p99, extra, _ = cluster_bench.verdicts(results)
    rounds = len(results["rounds"])
    median = f", median of {rounds} rounds" if rounds > 1 else ""
    out(f"== scenario {name}: summary ({generator} load generator, two processes{median})")
    for setup in ("alone", "cluster"):
        r = results[setup]
        out(f"  {setup:>7} {r['sent']} msgs at {sc['rate']:g}/s: delivered "
            f"{100 * r['delivered'] / max(r['expected'], 1):.2f}%, p50 {r['p50']:.1f} ms, "
            f"p99 {r['p99']:.1f} ms")
    out(f"  {p99}")
    out(f"  {extra}")
    return dict(sc, generator=generator, extra_p50_ms=results.pop("extra_p50"),
                results=results)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m twisted_chat.bench",
        description="Fan-out benchmark of twisted-chat against a bare LineReceiver broadcast "
                    "baseline, measured in the same run (see docs/performance.rst).")
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS),
                   help=f"scenarios to run, of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--members", type=int,
                   help="custom scenario: members in one room (with the cluster scenario "
                        "alone: the cluster scenario's members)")
    p.add_argument("--senders", type=int, default=10,
                   help="custom (or sized cluster) scenario: senders")
    p.add_argument("--rate", type=float, help="custom scenario: msgs/s (start rate if --sweep)")
    p.add_argument("--sweep", action="store_true", help="custom scenario: sweep the rate")
    p.add_argument("--rooms", metavar="ROOMS,PER",
                   help="custom scenario: every member joins PER of ROOMS rooms (C generator)")
    p.add_argument("--servers",
                   help="which servers, of ours, metrics (ours with --metrics on, scraped "
                        "every second), bare, irc (ours through an --irc listener, every "
                        "member speaking IRC) and ws (ours through a --web listener, every "
                        "member speaking WebSocket) (default: ours,bare; ours,irc for the "
                        "irc scenarios, ours,ws for the ws ones)")
    p.add_argument("--face", choices=("line",) + FACES, default="line",
                   help="custom scenario: the face measured against the line protocol "
                        "(servers ours,FACE; default: line, i.e. ours,bare)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `twistd chat` option for our server (repeatable), "
                        "e.g. --server-arg=--rate=100000")
    p.add_argument("--duration", type=float,
                   help="seconds per step (default: 2, or 5 for the fixed-rate 10k scenario)")
    p.add_argument("--factor", type=float, default=1.5, help="sweep: rate multiplier (1.5)")
    p.add_argument("--max-rate", type=float, default=1e6, help="sweep: stop at this rate")
    p.add_argument("--refine", type=int, default=2,
                   help="sweep: steps that bisect each server's last interval between a "
                        "step that passed and one that failed (2: max sustained rates "
                        "within about 11%% instead of --factor)")
    p.add_argument("--retries", type=int, default=2,
                   help="sweep: failed steps retried per server (2)")
    p.add_argument("--workers", type=int,
                   help="load generator processes (default: 1, or 2 for the 10k scenario)")
    p.add_argument("--generator", choices=("auto", "python", "c"), default="auto",
                   help="load generator: c (one epoll process compiled from cgen.c with "
                        "cc -O2; every receiver samples latency unless --defer-reads), "
                        "python (worker processes), or auto, the default: c where a C "
                        "compiler is found, else python")
    p.add_argument("--defer-reads", action="store_true",
                   help="C generator: while messages are sent, read only the --probes "
                        "receivers (which sample latency); read the rest after the last "
                        "send, so that the generator's reading does not compete with the "
                        "server for the CPU")
    p.add_argument("--probes", type=int, default=16,
                   help="connections that parse timestamps for latency (16)")
    p.add_argument("--pad", type=int, default=32, help="message filler bytes (32)")
    p.add_argument("--prefill", type=int, metavar="N",
                   help="messages in the room's history before the members join (each "
                        "joiner gets them replayed); default: the scenario's (50 for 10k, "
                        "else 0)")
    p.add_argument("--connect-rate", type=float, default=2000.0, help="connections/s (2000)")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--rounds", type=int,
                   help="cluster scenario: rounds of alone and cluster, on fresh servers "
                        "each; its targets are judged on their medians (3)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw deliveries/s and p99 vs offered rate "
                   "(needs the `bench` extra: matplotlib)")
    args = p.parse_args(argv)
    if args.plot:
        try:  # said now, not after minutes of measuring
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install '.[bench]'")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds: at least 1")
    raise_fd_limit()
    args.generator_class = LoadGenerator
    args.generator_name = "python"
    if args.generator in ("c", "auto"):
        if compiler() is None:
            print("no C compiler (cc, or $CC) on PATH: using the Python load generator",
                  flush=True)
        else:
            args.generator_class = functools.partial(CLoadGenerator, defer=args.defer_reads)
            args.generator_name = "c, deferred reads" if args.defer_reads else "c"

    scenarios = {}
    if args.generator_name == "python" and any(
            SCENARIOS.get(name, {}).get("rooms") for name in args.scenarios):
        if args.scenarios == list(SCENARIOS):  # the default: all it can run
            args.scenarios = [n for n in args.scenarios if not SCENARIOS[n].get("rooms")]
            print("the rooms scenario needs the C load generator: skipped", flush=True)
        else:
            p.error("the rooms scenario needs the C load generator (--generator c, and cc)")
    if args.members and args.scenarios == ["cluster"]:
        # the cluster scenario at another size
        scenarios["cluster"] = dict(SCENARIOS["cluster"], members=args.members,
                                    senders=min(args.senders, args.members // 2 or 1))
    elif args.members:
        scenarios["custom"] = dict(members=args.members, senders=args.senders,
                                   sweep=args.sweep, rate=args.rate or 10.0)
        if args.face != "line":
            scenarios["custom"]["servers"] = ("ours", args.face)
        if args.rooms:
            if args.generator_name == "python":
                p.error("--rooms needs the C load generator (--generator c, and cc)")
            if args.face != "line":
                p.error("--rooms is for the line face only")
            scenarios["custom"]["rooms"] = tuple(int(n) for n in args.rooms.split(","))
    else:
        for name in args.scenarios:
            if name not in SCENARIOS:
                p.error(f"unknown scenario {name!r}")
            scenarios[name] = SCENARIOS[name]
    if args.rate and (not args.members or "cluster" in scenarios):
        scenarios = {k: dict(v, rate=args.rate) for k, v in scenarios.items()}
    chosen = [k.strip() for k in args.servers.split(",") if k.strip()] if args.servers else None
    known = ("ours", "metrics", "bare") + FACES
    for kind in chosen or ():
        if kind not in known:
            p.error(f"unknown server {kind!r} (of {', '.join(known)})")
    if chosen and any(SCENARIOS.get(n, {}).get("rooms") for n in scenarios) and any(
            k in FACES for k in chosen):
        p.error("the rooms scenario is for the line face only")

    def out(line):
        print(line, flush=True)

    started = time.time()
    everything = {"argv": sys.argv[1:], "scenarios": {},
                  "generator": args.generator_name}
    for name, sc in scenarios.items():
        rooms = (f" (each in {sc['rooms'][1]} of {sc['rooms'][0]} rooms, "
                 f"{sc['members'] * sc['rooms'][1] // sc['rooms'][0]} members a room)"
                 if sc.get("rooms") else "")
        out(f"== scenario {name}: {sc['members']} members{rooms}, {sc['senders']} senders, "
            + (f"sweep from {sc['rate']:.0f} msgs/s x{args.factor}" if sc["sweep"]
               else f"{sc['rate']:.0f} msgs/s")
            + f", {args.duration or sc.get('duration', 2.0):.0f} s steps, "
            + f"{args.generator_name} load generator")
        if sc.get("cluster"):
            everything["scenarios"][name] = run_cluster(name, sc, args, out)
            continue
        kinds = chosen or list(sc.get("servers", DEFAULT_SERVERS))
        results = measure(kinds, sc, args, out)
        report(name, sc, results, out)
        everything["scenarios"][name] = dict(sc, results=results)
    out(f"== done in {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)
    if args.plot:
        from .plot import plot
        if plot(everything, args.plot):
            out(f"plot written to {args.plot}")
        else:
            out("nothing to plot (the cluster scenario is not drawn)")
