"""The fan-out benchmark's own machinery, run small: real servers, real sockets.

These check that the load generator counts and times deliveries correctly
(no speed is asserted here: speed is measured only by the benchmark itself).
"""

import argparse
import io
import math
import json
import os
import shutil
import socket
import tempfile
from contextlib import redirect_stdout
from unittest import mock

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_chat.bench import cgen, cli
from twisted_chat.bench.loadgen import LoadGenerator, ws_frame, ws_frames
from twisted_chat.bench.servers import BareServer, OurServer


class LoadGeneratorTests(SynchronousTestCase):
    def run_small(self, server, register, face="line"):
        server.start()
        self.addCleanup(server.stop)
        gen = LoadGenerator(members=6, senders=2, workers=2, probes=4, face=face)
        self.addCleanup(gen.close)
        conn = gen.connect(server.port, rate=500, register=register, timeout=15)
        self.assertEqual(conn["registered"], 6)
        gen.settle(quiet=0.2, timeout=10)
        raw = gen.run(rate=40, duration=0.5, drain_quiet=0.3)
        self.assertEqual(raw["sent"], 20)
        self.assertEqual(raw["receivers"], 6)
        self.assertEqual(raw["errors"], 0)
        # text mode and IRC: each message reaches every member but its
        # sender; JSON mode (WebSocket) echoes it to its sender too
        echo = face == "ws"
        self.assertEqual(raw["echo"], echo)
        self.assertEqual(raw["received"], 20 * (5 + echo))
        self.assertGreater(len(raw["samples"]), 0)
        self.assertTrue(all(0 <= us < 15_000_000 for us in raw["samples"]))
        return raw

    def test_bare_baseline(self):
        self.run_small(BareServer(), register=False)

    def test_our_server(self):
        self.run_small(OurServer(), register=True)

    def test_our_server_over_irc(self):
        self.run_small(OurServer(face="irc"), register=True, face="irc")

    def test_our_server_over_websocket(self):
        self.run_small(OurServer(face="ws"), register=True, face="ws")

    def test_websocket_frames_are_masked_and_parsed_back(self):
        frame = ws_frame(b"/say hello")
        self.assertEqual(frame[0], 0x81)  # final text frame
        self.assertEqual(frame[1], 0x80 | 10)  # masked, 10 bytes
        key = frame[2:6]
        self.assertEqual(bytes(b ^ key[i % 4] for i, b in enumerate(frame[6:])), b"/say hello")
        long = ws_frame(b"x" * 300, opcode=0xA)
        self.assertEqual((long[0], long[1], long[2:4]),
                         (0x8A, 0x80 | 126, (300).to_bytes(2, "big")))
        # a server's frames, unmasked, split anywhere: whole frames and the rest
        server = b"\x81\x02hi" + b"\x81\x7e\x01\x2c" + b"y" * 300 + b"\x89\x00"
        self.assertEqual(ws_frames(server), ([(1, b"hi"), (1, b"y" * 300), (9, b"")], b""))
        self.assertEqual(ws_frames(server[:10]), ([(1, b"hi")], server[4:10]))

    def test_summary_counts_missing_deliveries(self):
        raw = {"sent": 10, "received": 40, "receivers": 6, "samples": [1000, 2000],
               "cpu": 0.1, "wall": 1.5, "errors": 0}
        step = cli.summarize(raw, rate=10, duration=1.0, cpu_server=0.5, rss_peak_kb=1000)
        self.assertEqual(step["expected"], 50)
        self.assertAlmostEqual(step["delivery"], 0.8)
        self.assertFalse(step["ok"])
        raw["received"] = 50
        self.assertTrue(cli.summarize(raw, 10, 1.0, 0.5, 1000)["ok"])

    def test_a_scenario_target_tightens_the_latency_limit(self):
        raw = {"sent": 10, "received": 50, "receivers": 6, "samples": [150_000] * 100,
               "cpu": 0.1, "wall": 1.5, "errors": 0}
        self.assertTrue(cli.summarize(raw, 10, 1.0, 0.5, 1000)["ok"])  # 150 ms <= 250
        self.assertFalse(cli.summarize(raw, 10, 1.0, 0.5, 1000, max_p99_ms=100.0)["ok"])
        self.assertEqual(cli.SCENARIOS["10k"]["max_p99_ms"], 100.0)


class CLoadGeneratorTests(SynchronousTestCase):
    """The optional C generator (cgen.c), compiled here with the real ``cc``."""

    if cgen.compiler() is None:
        skip = "no C compiler (cc) on PATH: the C load generator cannot be built"

    def run_small(self, server, register, face="line", prefill=0):
        server.start()
        self.addCleanup(server.stop)
        gen = cgen.CLoadGenerator(members=7, senders=3, face=face)
        self.addCleanup(gen.close)
        conn = gen.connect(server.port, rate=500, register=register, timeout=15)
        self.assertEqual(conn, {"registered": 7, "seconds": conn["seconds"], "errors": 0})
        gen.settle(quiet=0.2, timeout=10)
        raw = gen.run(rate=40, duration=0.5, drain_quiet=0.3)
        self.assertEqual(raw["sent"], 20)
        self.assertEqual(raw["receivers"], 7)
        self.assertEqual(raw["errors"], 0)
        # text mode and IRC: each message reaches every member but its
        # sender (JSON mode, WebSocket: its sender too), and every receiver
        # parses every stamp: one sample per delivery
        per = 6 + (face == "ws")
        self.assertEqual(raw["echo"], face == "ws")
        self.assertEqual(raw["received"], 20 * per)
        self.assertEqual(len(raw["samples"]), 20 * per)
        self.assertTrue(all(0 <= us < 15_000_000 for us in raw["samples"]))
        # a second run on the same connections counts afresh
        raw = gen.run(rate=20, duration=0.5, drain_quiet=0.3)
        self.assertEqual((raw["sent"], raw["received"]), (10, 10 * per))

    def test_our_server(self):
        self.run_small(OurServer(), register=True)

    def test_our_server_over_irc(self):
        # replayed history (PRIVMSGs on join) is not counted as deliveries
        self.run_small(OurServer(face="irc", prefill=5), register=True, face="irc")

    def test_our_server_over_websocket(self):
        self.run_small(OurServer(face="ws", prefill=5), register=True, face="ws")

    def test_a_face_has_no_rooms(self):
        with self.assertRaises(ValueError):
            cgen.CLoadGenerator(members=4, senders=1, rooms=(2, 1), face="irc")

    def test_bare_baseline(self):
        self.run_small(BareServer(), register=False)

    def test_rooms_on_the_bare_baseline(self):
        # 12 members, each in 2 of 4 rooms: 6 members a room; each message
        # is expected 5 times.
        server = BareServer().start()
        self.addCleanup(server.stop)
        gen = cgen.CLoadGenerator(members=12, senders=3, rooms=(4, 2))
        self.addCleanup(gen.close)
        self.assertEqual(gen.connect(server.port, rate=500, register=False,
                                     timeout=15)["registered"], 12)
        gen.settle(quiet=0.2, timeout=10)
        raw = gen.run(rate=40, duration=0.5, drain_quiet=0.3)
        self.assertEqual((raw["sent"], raw["fanout"], raw["errors"]), (20, 6, 0))
        self.assertEqual(raw["received"], 20 * 5)
        self.assertEqual(len(raw["samples"]), 20 * 5)

    def test_deferred_reads_count_everything_and_sample_probes_only(self):
        server = OurServer().start()
        self.addCleanup(server.stop)
        gen = cgen.CLoadGenerator(members=7, senders=3, probes=2, defer=True)
        self.addCleanup(gen.close)
        self.assertEqual(gen.connect(server.port, rate=500, timeout=15)["registered"], 7)
        gen.settle(quiet=0.2, timeout=10)
        raw = gen.run(rate=40, duration=0.5, drain_quiet=0.3)
        self.assertEqual((raw["sent"], raw["received"], raw["errors"]), (20, 20 * 6, 0))
        # the two probes are non-senders: each sees all 20 messages
        self.assertEqual(len(raw["samples"]), 2 * 20)


class PrefillTests(SynchronousTestCase):
    def test_a_joiner_gets_the_prefilled_history(self):
        server = OurServer(prefill=3).start()
        self.addCleanup(server.stop)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b"/join lobby\r\n")
        data = b""
        while b"-- end of history" not in data:
            chunk = sock.recv(65536)
            self.assertTrue(chunk, data)
            data += chunk
        replayed = [line for line in data.split(b"\r\n") if b"replayed to every joiner" in line]
        self.assertEqual(len(replayed), 3, data)
        self.assertTrue(replayed[2].endswith(b"#2"), replayed)


class CompilerMissingTests(SynchronousTestCase):
    def test_no_compiler_is_a_clear_error(self):
        old = os.environ.get("CC")
        os.environ["CC"] = "/nonexistent/cc"
        self.addCleanup(lambda: os.environ.pop("CC") if old is None
                        else os.environ.__setitem__("CC", old))
        self.assertIsNone(cgen.compiler())
        with self.assertRaises(cgen.CompilerMissing):
            cgen.CLoadGenerator(members=2, senders=1)


class _Stub:
    """A generator's and a server's place, for sweeps of fake subjects."""

    def close(self):
        pass

    stop = close

    def status(self, field):
        return None


class ClusterScenarioTests(SynchronousTestCase):
    """The cluster scenario, tiny: PostgreSQL, Redis and two servers, for real
    (skipped only where PostgreSQL or Redis cannot run)."""

    def setUp(self):
        from twisted_chat.cluster import bench

        reason = bench.why_not()
        if reason:
            raise SkipTest(reason)

    def check(self, results, members, sent):
        for setup in ("alone", "cluster"):
            r = results[setup]
            self.assertEqual(r["sent"], sent, setup)
            # every message to every member but its sender, half of them
            # (all in the cluster) on the other server
            self.assertEqual(r["expected"], sent * (members - 1), setup)
            self.assertEqual(r["delivered"], r["expected"], setup)
            self.assertEqual(r["delivered_second"], sent * (members // 2), setup)
            for key in ("p50", "p99", "p50_local", "p50_far"):
                self.assertTrue(0 <= r[key] < 15_000, (setup, key, r[key]))

    def test_every_delivery_arrives_alone_and_across_two_servers(self):
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        out = io.StringIO()
        with redirect_stdout(out):
            cli.main(["cluster", "--members", "40", "--senders", "4", "--rate", "20",
                      "--duration", "1", "--rounds", "2", "--json", path])
        with open(path) as f:
            sc = json.load(f)["scenarios"]["cluster"]
        # two rounds, each on fresh servers (and a fresh Redis: the first
        # round's nick claims would refuse the second's members)
        rounds = sc["results"]["rounds"]
        self.assertEqual(len(rounds), 2)
        for one in rounds:
            self.check(one, 40, 20)
        # counts summed, latencies the rounds' medians
        self.check(sc["results"], 40, 40)
        for setup in ("alone", "cluster"):
            self.assertEqual(sc["results"][setup]["p99"],
                             (rounds[0][setup]["p99"] + rounds[1][setup]["p99"]) / 2)
        self.assertEqual(sc["extra_p50_ms"],
                         (rounds[0]["extra_p50"] + rounds[1]["extra_p50"]) / 2)
        self.assertEqual(sc["generator"], "python" if cgen.compiler() is None else "c")
        text = out.getvalue()
        self.assertIn("cross-server extra p50 (median of 2 rounds, <= 5 ms): ", text)
        self.assertIn("p99 (median of 2 rounds, cluster <= alone): ", text)
        self.assertIn("round 2/2, cluster: 40/40 members registered", text)

    def test_the_python_generator_through_the_cluster_module(self):
        from twisted_chat.cluster import bench

        lines = []
        results = bench.measure(members=10, senders=2, rate=10, duration=1,
                                generator="python", out=lines.append)
        self.assertEqual(results["generator"], "python")
        self.check(results, 10, 10)


class ClusterScenarioSkipTests(SynchronousTestCase):
    def test_without_postgresql_or_redis_the_scenario_says_why(self):
        from unittest import mock

        from twisted_chat.cluster import bench

        out = io.StringIO()
        with mock.patch.object(bench, "why_not", lambda: "redis-server is not installed"), \
                redirect_stdout(out):
            cli.main(["cluster", "--members", "10"])
        self.assertIn("== scenario cluster: skipped: redis-server is not installed",
                      out.getvalue())


class CommandLineTests(SynchronousTestCase):
    def test_custom_scenario_reports_ratios_and_json(self):
        self.run_custom([])

    def test_prefilled_history_and_peak_memory_per_connection(self):
        results = self.run_custom(["--prefill", "7"])["scenarios"]["custom"]["results"]
        self.assertEqual(results["ours"]["prefill"], 7)
        for kind in ("ours", "bare"):
            r = results[kind]
            self.assertAlmostEqual(r["kb_per_connection_hwm"], r["rss_hwm_kb"] / 5)
        self.assertIn("KB per connection, history replay of 7 messages to every joiner",
                      self.text)

    def test_the_python_generator_on_request(self):
        results = self.run_custom(["--generator", "python"])
        self.assertEqual(results["generator"], "python")

    def test_metrics_on_and_off_in_one_run(self):
        everything = self.run_custom(["--servers", "ours,metrics,bare"])
        results = everything["scenarios"]["custom"]["results"]
        self.assertEqual(results["metrics"]["steps"][0]["delivery"], 1.0)
        # A number (it was nan for a fixed-rate step); it may be 0.0: this
        # tiny step can take less CPU than the clock's 10 ms tick.
        cpu = results["metrics"]["cpu_s_per_m_deliveries"]
        self.assertFalse(math.isnan(cpu))
        self.assertGreaterEqual(cpu, 0)
        self.assertIn("scrapes", results["metrics"])

    def test_plot_without_matplotlib_fails_before_measuring(self):
        import sys
        from contextlib import redirect_stderr
        from unittest import mock

        err = io.StringIO()
        # None in sys.modules makes "import matplotlib" raise ImportError.
        with mock.patch.dict(sys.modules, {"matplotlib": None}), redirect_stderr(err):
            with self.assertRaises(SystemExit) as exited:
                cli.main(["--plot", "never.png"])
        self.assertEqual(exited.exception.code, 2)
        self.assertIn("--plot needs matplotlib", err.getvalue())

    def test_irc_and_websocket_faces_against_the_line_protocol(self):
        for face in ("irc", "ws"):
            everything = self.run_custom(["--face", face], kinds=("ours", face))
            self.assertIn(f"RATIO {face}/line p99", self.text)
            results = everything["scenarios"]["custom"]["results"]
            self.assertEqual(sorted(results), sorted(["ours", face]))

    def test_a_face_is_judged_against_its_target_ratio(self):
        def result(kind, rate):
            return {"server": kind, "steps": [
                {"ok": True, "deliveries_per_s": rate, "rate": rate / 10}]}

        sc = dict(cli.SCENARIOS["irc"])
        for irc_rate, verdict in ((850.0, "0.85x (>= 0.8x: met)"),
                                  (700.0, "0.70x (>= 0.8x: NOT met)")):
            lines = []
            cli.report("irc", sc, {"ours": result("ours", 1000.0),
                                   "irc": result("irc", irc_rate)}, lines.append)
            self.assertIn(f"  RATIO irc/line max sustained deliveries/s: {verdict}", lines)

    def test_a_sweep_bisects_each_servers_last_interval(self):
        """After the x1.5 steps, each server's interval between its best
        passing and its first failing rate is bisected --refine times, so a
        max sustained rate (and a ratio of two) is not quantised to 1.5x."""
        limits = {"ours": 130.0, "bare": 200.0}  # what each fake server sustains

        class Fake(cli.Subject):
            def setup(self):
                self.gen, self.server = _Stub(), _Stub()
                self.active = True

            def step(self, rate, duration):
                ok = rate <= limits[self.kind]
                self.result["steps"].append({"rate": rate, "ok": ok})
                self.active = ok
                self.note(rate, ok)
                return ok

            def close(self):
                pass

        args = argparse.Namespace(retries=0, refine=2, factor=1.5, max_rate=1e6,
                                  duration=1.0)
        sc = dict(sweep=True, rate=100.0)
        with mock.patch.object(cli, "Subject", Fake):
            results = cli.measure(["ours", "bare"], sc, args, lambda line: None)
        ours = [s["rate"] for s in results["ours"]["steps"]]
        # 100 passes, 150 fails; then sqrt(100*150) = 122.5 passes, then
        # sqrt(122.5*150) = 135.5 fails: the best is within 11 % of 130.
        self.assertEqual([round(r, 1) for r in ours], [100.0, 122.5, 135.5, 150.0])
        best = max(s["rate"] for s in results["ours"]["steps"] if s["ok"])
        self.assertAlmostEqual(best, 122.47, places=2)
        bare = [round(s["rate"], 1) for s in results["bare"]["steps"]]
        # 100, 150 pass, 225 fails; then 183.7 passes, 203.3 fails.
        self.assertEqual(bare, [100.0, 150.0, 183.7, 203.3, 225.0])
        # No refinement asked: the plain x1.5 sweep.
        args.refine = 0
        with mock.patch.object(cli, "Subject", Fake):
            results = cli.measure(["ours"], sc, args, lambda line: None)
        self.assertEqual([s["rate"] for s in results["ours"]["steps"]], [100.0, 150.0])

    def test_each_bisecting_step_runs_on_a_fresh_server(self):
        """The step before a bisecting one overloaded the server (it may
        still digest it, or have cut its members as slow clients when the
        generator fell --max-backlog behind): each bisecting step runs on a
        fresh server and members, as the sweep's steps did, not on dead
        connections (which would fail, having sent nothing)."""
        setups = []

        class Fake(cli.Subject):
            def setup(self):
                setups.append(self.kind)
                self.gen, self.server = _Stub(), _Stub()
                self.result["connect_seconds"] = len(setups)
                self.active = True

            def step(self, rate, duration):
                ok = not self.lost and rate <= 130.0
                self.result["steps"].append({"rate": rate, "ok": ok})
                self.active = ok
                self.note(rate, ok)
                self.lost = not ok  # a failed step cut every member
                return ok

            def close(self):
                pass

        args = argparse.Namespace(retries=0, refine=2, factor=1.5, max_rate=1e6,
                                  duration=1.0)
        with mock.patch.object(cli, "Subject", Fake):
            results = cli.measure(["ws"], dict(sweep=True, rate=100.0), args,
                                  lambda line: None)
        # Set up once, then again before each bisecting step.
        self.assertEqual(setups, ["ws", "ws", "ws"])
        steps = [(round(s["rate"], 1), s["ok"]) for s in results["ws"]["steps"]]
        self.assertEqual(steps, [(100.0, True), (122.5, True), (135.5, False), (150.0, False)])
        self.assertEqual(results["ws"]["connect_seconds"], 1)  # the first connect's

    def run_custom(self, extra, kinds=("ours", "bare")):
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        out = io.StringIO()
        with redirect_stdout(out):
            cli.main(["--members", "5", "--senders", "1", "--rate", "20", "--duration", "0.5",
                      "--json", path] + extra)
        text = self.text = out.getvalue()
        self.assertIn(f"RATIO {kinds[1] if kinds[1] in cli.FACES else 'ours/bare'}", text)
        if "metrics" in " ".join(extra):
            self.assertIn("RATIO metrics-on/off server CPU per delivery", text)
        with open(path) as f:
            everything = json.load(f)
        results = everything["scenarios"]["custom"]["results"]
        for kind in kinds:
            step = results[kind]["steps"][0]
            self.assertEqual(step["delivery"], 1.0, text)
            self.assertGreater(results[kind]["rss_idle_kb"], 0)
        return everything


class ClusterTraceTests(SynchronousTestCase):
    """The --trace summary of several rounds: message ids start again in each
    round's database, so a round's messages are matched within it only."""

    def write(self, directory, server, lines):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, server + ".trace"), "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def test_rounds_are_matched_each_within_itself(self):
        from twisted_chat.cluster.trace import summary

        top = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, top)
        one, two = os.path.join(top, "round1"), os.path.join(top, "round2")
        # round 1: message 1 committed on a at 1,000 µs, out on b 600 µs later
        self.write(one, "a", ["commit 1000 1 500", "publish 1100 1", "out 1010 1"])
        self.write(one, "b", ["heard 1500 1", "out 1600 1"])
        # round 2, message 1 again (a fresh database): out on d 900 µs later
        self.write(two, "c", ["commit 9000 1 8000", "publish 9200 1", "out 9020 1"])
        self.write(two, "d", ["heard 9800 1", "out 9900 1"])
        steps = {step: (ms, n) for step, ms, n in summary(one, two)}
        self.assertEqual(steps["commit -> out in id order (other server)"], (0.9, 2))
        self.assertEqual(steps["send -> commit (sender's server)"], (1.0, 2))
        self.assertEqual(steps["publish -> heard (Redis, the other server's reading)"],
                         (0.6, 2))
