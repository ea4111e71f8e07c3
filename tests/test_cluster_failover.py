"""Redis that stops answering (SIGSTOP: its connections stay open but
silent, as after a network cut) is noticed by the servers' keepalive
pings, and nothing said meanwhile is lost."""

import json
import os
import signal

from .test_cluster_server import ClusterTestCase


class RedisSilenceTests(ClusterTestCase):
    def test_a_silent_redis_is_noticed_and_nothing_is_lost(self):
        a, b = self.server(), self.server()
        alice, bob = self.client(a, "alice"), self.client(b, "bob")
        alice.expect_event("join", nick="bob")
        alice.send("before")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "before")
        # Stopped, Redis keeps its sockets open and answers nothing: to the
        # servers a silent cut. Their pings go unanswered; they drop the
        # connections and read what the others say from the database.
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            for server in (a, b):
                server.wait_for_log("redis: subscription lost", timeout=20)
            alice.send("while redis is silent")
            bob.send("also while redis is silent")
            self.assertEqual(bob.expect_event("message", nick="alice")["text"],
                             "while redis is silent")
            self.assertEqual(alice.expect_event("message", nick="bob")["text"],
                             "also while redis is silent")
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        for server in (a, b):
            server.wait_for_log("redis: subscribed", timeout=20)
        alice.send("after")
        self.assertEqual(bob.expect_event("message", nick="alice")["text"], "after")
        # Nothing twice, nobody judged gone.
        for c in (alice, bob):
            texts = [ev["text"] for ev in map(_json, c.seen) if ev.get("type") == "message"
                     and not ev.get("history")]
            self.assertEqual(len(texts), len(set(texts)), texts)
            self.assertEqual([ev for ev in map(_json, c.seen) if ev.get("type") == "quit"], [])


def _json(line):
    try:
        return json.loads(line)
    except ValueError:
        return {}
