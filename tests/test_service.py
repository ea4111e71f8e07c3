"""Running as a service: the systemd unit kept in contrib/ (its keys, its
``twistd chat`` options, and ``systemd-analyze verify`` where there is one),
and JSON logs (``twistd --logger twisted_chat.logs.json``) from a real server."""

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile

from twisted.logger import Logger, eventsFromJSONLogFile
from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import limits, logs
from twisted_chat.tap import Options

from .support import ChatServer, twistd_command

UNIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib",
                    "twisted-chat.service")


def parse_unit(text):
    """{section: {key: [values]}} of a systemd unit file (comments dropped,
    backslash continuations joined)."""
    sections, section = {}, None
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value):
    """A systemd time span of whole seconds or minutes ("30", "30s", "2min")."""
    m = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    if m is None:
        raise ValueError(f"not a time span this test reads: {value!r}")
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


class UnitFileTests(SynchronousTestCase):
    def setUp(self):
        with open(UNIT) as f:
            self.text = f.read()
        self.unit = parse_unit(self.text)
        self.service = self.unit["Service"]

    def chat_options(self):
        argv = shlex.split(self.service["ExecStart"][0])
        self.assertEqual(os.path.basename(argv[0]), "twistd")
        self.assertIn("--nodaemon", argv[:argv.index("chat")])  # systemd supervises it
        options = Options()
        options.parseOptions(argv[argv.index("chat") + 1:])
        return options

    def test_the_options_the_issue_asks_for(self):
        service = self.service
        self.assertEqual(service["Restart"], ["on-failure"])
        self.assertTrue(service["User"][0])
        self.assertTrue(service["WorkingDirectory"][0].startswith("/"))
        self.assertGreaterEqual(int(service["LimitNOFILE"][0]),
                                self.chat_options()["max-clients"] + limits.FD_HEADROOM)
        self.assertEqual(self.unit["Install"]["WantedBy"], ["multi-user.target"])

    def test_stop_timeout_is_longer_than_the_shutdown_timeout(self):
        options = self.chat_options()
        self.assertGreater(seconds(self.service["TimeoutStopSec"][0]),
                           options["shutdown-timeout"] + 5)

    def test_the_database_is_in_the_working_directory(self):
        db = self.chat_options()["db"]
        self.assertFalse(os.path.isabs(db))
        self.assertIn(self.service["WorkingDirectory"][0],
                      ["/var/lib/" + d for d in self.service["StateDirectory"]])

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("no systemd-analyze here; the key checks above still ran")
        # The unit names where a real install keeps twistd; verify insists
        # that ExecStart exists, so check a copy that names this one.
        twistd = twistd_command()
        if len(twistd) != 1:
            self.skipTest("no twistd script beside this Python")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "twisted-chat.service")

        def verify(text):
            with open(path, "w") as f:
                f.write(text.replace("/opt/twisted-chat/bin/twistd", twistd[0]))
            done = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True,
                                  text=True, timeout=60)
            return done.returncode, (done.stdout + done.stderr).strip()

        self.assertEqual(verify(self.text), (0, ""))
        # It does find mistakes (it only warns about a misspelt key).
        code, said = verify(self.text.replace("Restart=", "Restrat="))
        self.assertIn("Unknown key", said)


class JSONLogTests(SynchronousTestCase):
    def test_one_json_object_a_line_with_its_text(self):
        out = io.StringIO()
        observer = logs.json(out)
        log = Logger(namespace="chat.test", observer=observer)
        log.info("connect {peer} as {nick}", peer="127.0.0.1:5000", nick="guest1")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("internal error handling a line from {peer}", peer="x")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(first["log_text"], "connect 127.0.0.1:5000 as guest1")
        self.assertEqual((first["nick"], first["log_namespace"]), ("guest1", "chat.test"))
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertIn("ZeroDivisionError", second["log_text"])
        # Twisted reads it back, too.
        events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
        self.assertEqual(events[0]["peer"], "127.0.0.1:5000")

    def test_a_real_server_logs_json_lines(self):
        server = ChatServer(twistd_args=["--logger", "twisted_chat.logs.json"]).start()
        self.addCleanup(server.stop)
        client = server.client()
        self.addCleanup(client.close)
        client.json_mode("alice")
        server.wait_for_log(r"connect 127\.0\.0\.1:\d+ as guest")
        client.send("/quit")
        self.assertTrue(client.closed())
        server.wait_for_log(r"disconnect .* alice")
        server.stop()  # twistd ends by the SIGTERM it got: systemd counts that as clean
        records = [json.loads(line) for line in server.log]  # every line is JSON
        texts = [r["log_text"] for r in records]
        self.assertTrue(any(t.startswith("chat listening on tcp:") for t in texts), texts)
        joined = [r for r in records if r["log_text"].startswith("connect ")]
        self.assertEqual(joined[0]["log_namespace"], "twisted_chat.protocol.ChatProtocol")
        self.assertEqual(joined[0]["log_level"]["name"], "info")
