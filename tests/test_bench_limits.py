"""The issue-4 evidence scripts, run small (they are measured only when run
by hand; here we check they work end to end)."""

import io
import resource
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import limits
from twisted_chat.bench import memory, storm


class EvidenceScriptTests(SynchronousTestCase):
    def test_storm_small(self):
        out = io.StringIO()
        with redirect_stdout(out):
            code = storm.main(["--clients", "60", "--workers", "2", "--room-size", "20",
                               "--shutdown"])
        self.assertEqual(code, 0, out.getvalue())
        self.assertIn("accepted 60, registered 60, refused 0, failed 0", out.getvalue())
        self.assertIn("60 of 60 got 'bye: server shutting down', 60 closed", out.getvalue())
        # The server started at 1024 and raised its soft limit itself.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        wanted = 10000 + limits.FD_HEADROOM
        expected = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        self.assertIn(f"Max open files {expected} ", out.getvalue())

    def test_memory_small_cuts_the_stalled_client_off(self):
        lines = []
        result = memory.memory_run(65536, 6000, 1000, lines.append)
        self.assertTrue(result["cut_off"], lines)
        self.assertIn("cut off", lines[0])

    def test_overload_small(self):
        lines = []
        result = memory.overload_run(3, 40, lines.append)
        self.assertFalse(result["cut_off"], lines)
        self.assertGreaterEqual(result["hwm_kib"], result["rss_before_kib"])
        self.assertIn("3 clients x 40 lines of 4096 B", lines[0])
        self.assertIn("peak (VmHWM)", lines[0])


class FdLimitTests(SynchronousTestCase):
    def test_soft_limit_is_raised_towards_wanted_never_past_hard(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        low = min(soft, 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        wanted = low + 100 if hard == resource.RLIM_INFINITY else min(low + 100, hard)
        self.assertEqual(limits.raise_fd_limit(wanted), wanted)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], wanted)
        # never lowered
        self.assertEqual(limits.raise_fd_limit(10), wanted)
        if hard != resource.RLIM_INFINITY:
            self.assertEqual(limits.raise_fd_limit(hard + 1000), hard)

    def test_max_clients_is_capped_to_what_the_descriptor_limit_fits(self):
        from twisted_chat.tap import _check_descriptors

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY:
            self.assertEqual(_check_descriptors(1000, 1), 1000)
            return
        # More clients than the hard limit can hold: capped below it, so the
        # extra clients get a clean server-full instead of a failed accept().
        fits = _check_descriptors(hard, 1)
        self.assertEqual(fits, max(hard - limits.FD_HEADROOM, hard // 2))
        self.assertEqual(_check_descriptors(0, 1), fits)  # "unlimited" is capped too
        self.assertEqual(_check_descriptors(hard // 4, 1), hard // 4)
