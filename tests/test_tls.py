"""TLS listeners: a real ``twistd chat`` with ``--port ssl:...`` beside a plain one,
a certificate made in the test, clients that verify it (or fail to)."""

import os
import shutil
import ssl
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from .certs import self_signed
from .support import ChatServer, LineClient


def verifying_context(cafile):
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TLSListenerTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-tls-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.key, self.cert = self_signed(self.dir, "localhost")
        # Relative paths: twistd runs in the directory holding them.
        self.server = ChatServer(
            "--port", "ssl:0:interface=127.0.0.1:privateKey=server.key:certKey=server.pem",
            directory=self.dir,
        ).start()
        self.addCleanup(self.server.stop)
        self.tls_port = self.server.listener("ssl:")

    def tls_client(self, cafile=None, hostname="localhost"):
        c = LineClient(self.tls_port, tls=verifying_context(cafile or self.cert),
                       server_hostname=hostname)
        self.addCleanup(c.close)
        return c

    def test_verifying_client_chats_with_plain_client(self):
        self.assertNotEqual(self.tls_port, self.server.port)
        secure = self.tls_client()
        self.assertEqual(secure.sock.getpeercert()["subject"], ((("commonName", "localhost"),),))
        secure.json_mode("alice")
        plain = self.server.client()
        self.addCleanup(plain.close)
        plain.json_mode("bob")
        secure.expect_event("join", nick="bob")
        secure.send("over TLS")
        self.assertEqual(plain.expect_event("message", nick="alice")["text"], "over TLS")
        plain.send("over TCP")
        self.assertEqual(secure.expect_event("message", nick="bob")["text"], "over TCP")

    def test_wrong_ca_fails_cleanly(self):
        other_dir = os.path.join(self.dir, "other")
        os.mkdir(other_dir)
        _, wrong_ca = self_signed(other_dir, "localhost")
        with self.assertRaises(ssl.SSLCertVerificationError) as caught:
            LineClient(self.tls_port, tls=verifying_context(wrong_ca),
                       server_hostname="localhost")
        self.assertIn("certificate verify failed", str(caught.exception))
        # The server shrugs it off and keeps serving TLS clients.
        ok = self.tls_client()
        ok.json_mode("carol")
        ok.send("/ping still-here")
        self.assertEqual(ok.expect_event("pong")["token"], "still-here")
        self.assertNotIn("Traceback", self.server.logtext())

    def test_hostname_mismatch_fails(self):
        with self.assertRaises(ssl.SSLCertVerificationError) as caught:
            LineClient(self.tls_port, tls=verifying_context(self.cert),
                       server_hostname="chat.example")
        self.assertIn("mismatch", str(caught.exception).lower())

    def test_plain_text_to_tls_port_is_dropped_without_harm(self):
        raw = LineClient(self.tls_port)
        self.addCleanup(raw.close)
        raw.send("hello in clear text")
        self.assertTrue(raw.closed())
        ok = self.tls_client()
        ok.json_mode("dave")
        self.assertNotIn("Traceback", self.server.logtext())
