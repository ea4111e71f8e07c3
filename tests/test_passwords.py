"""The account file format and the ``twisted-chat-passwd`` command (a real subprocess)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from twisted_chat import passwords

# Cheap parameters keep the tests quick; the format is the same as the default's.
CHEAP = dict(ln=4, r=8, p=1)
ENTRY = re.compile(r"^([^:#]+):\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class HashTests(SynchronousTestCase):
    def test_hash_format_and_verification(self):
        encoded = passwords.hash_password("correct horse", **CHEAP)
        self.assertRegex(encoded, r"^\$scrypt\$ln=4,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")
        self.assertTrue(passwords.verify_password("correct horse", encoded))
        self.assertFalse(passwords.verify_password("correct horsE", encoded))
        self.assertFalse(passwords.verify_password("", encoded))

    def test_salts_differ(self):
        a, b = (passwords.hash_password("same", **CHEAP) for _ in range(2))
        self.assertNotEqual(a, b)
        self.assertTrue(passwords.verify_password("same", a) and passwords.verify_password("same", b))

    def test_default_cost(self):
        ln, r, p, salt, digest = passwords.parse_hash(passwords.hash_password("x"))
        self.assertEqual((ln, r, p, len(salt), len(digest)), (15, 8, 1, 16, 32))

    def test_known_vector(self):
        # Fixed salt: the stored string is reproducible from hashlib.scrypt alone.
        import base64
        import hashlib
        salt = b"0123456789abcdef"
        encoded = passwords.hash_password("pw", ln=4, r=8, p=1, salt=salt)
        digest = hashlib.scrypt(b"pw", salt=salt, n=16, r=8, p=1, dklen=32)
        self.assertEqual(encoded, "$scrypt$ln=4,r=8,p=1$"
                         + base64.b64encode(salt).decode().rstrip("=") + "$"
                         + base64.b64encode(digest).decode().rstrip("="))

    def test_malformed_and_greedy_hashes_are_refused(self):
        for bad in ("", "plain", "$bcrypt$x$y$z", "$scrypt$ln=4,r=8$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
                    "$scrypt$ln=40,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
                    "$scrypt$ln=4,r=8,p=1$!!$AAAAAAAAAAAAAAAAAAAAAA"):
            self.assertRaises(ValueError, passwords.parse_hash, bad)

    def test_dummy_hash_matches_nothing(self):
        passwords.parse_hash(passwords.DUMMY_HASH)
        self.assertFalse(passwords.verify_password("", passwords.DUMMY_HASH))

    def test_password_text_rules(self):
        passwords.check_password_text("a fine pass phrase")
        for bad in ("", " lead", "trail ", "tab\there", "bell\x07"):
            self.assertRaises(ValueError, passwords.check_password_text, bad)


class FileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-passwd-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "accounts")

    def test_add_change_remove_keeps_other_lines(self):
        with open(self.path, "w") as f:
            f.write("# our team\n\n")
        h1 = passwords.hash_password("one", **CHEAP)
        self.assertFalse(passwords.set_account(self.path, "alice", h1))
        passwords.set_account(self.path, "bob", passwords.hash_password("two", **CHEAP))
        h3 = passwords.hash_password("three", **CHEAP)
        self.assertTrue(passwords.set_account(self.path, "ALICE", h3))  # same account, any case
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[:2], ["# our team", ""])
        self.assertEqual(lines[2], "ALICE:" + h3)
        self.assertEqual(lines[3].split(":")[0], "bob")
        accounts = passwords.read_accounts(self.path)
        self.assertEqual(sorted(accounts), ["alice", "bob"])
        self.assertEqual(accounts["alice"], ("ALICE", h3))
        self.assertTrue(passwords.set_account(self.path, "bob", None))
        self.assertEqual(sorted(passwords.read_accounts(self.path)), ["alice"])
        self.assertFalse(passwords.set_account(self.path, "bob", None))

    def test_new_file_is_private(self):
        passwords.set_account(self.path, "alice", passwords.hash_password("one", **CHEAP))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual([n for n in os.listdir(self.dir)], ["accounts"])  # no temp file left

    def test_bad_lines_are_named(self):
        with open(self.path, "w") as f:
            f.write("alice:" + passwords.hash_password("x", **CHEAP) + "\nbob:plaintext\n")
        e = self.assertRaises(ValueError, passwords.read_accounts, self.path)
        self.assertIn("line 2", str(e))
        with open(self.path, "w") as f:
            f.write("9lives:" + passwords.hash_password("x", **CHEAP) + "\n")
        self.assertIn("line 1", str(self.assertRaises(ValueError, passwords.read_accounts, self.path)))


class PasswdCommandTests(SynchronousTestCase):
    """``twisted-chat-passwd`` run as a real process, the password on stdin."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-passwd-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "accounts")

    def run_passwd(self, *args, stdin=""):
        script = os.path.join(os.path.dirname(sys.executable), "twisted-chat-passwd")
        cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "twisted_chat.passwd"]
        return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True,
                              timeout=60)

    def test_add_then_change(self):
        done = self.run_passwd(self.path, "alice", stdin="first secret\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), f"added alice in {self.path}")
        with open(self.path) as f:
            text = f.read()
        self.assertNotIn("first secret", text)
        match = ENTRY.match(text.strip())
        self.assertIsNotNone(match, text)
        self.assertEqual(match.group(1, 2, 3, 4), ("alice", "15", "8", "1"))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertTrue(passwords.verify_password("first secret", text.strip().split(":", 1)[1]))

        done = self.run_passwd(self.path, "Alice", stdin="second secret\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("changed the password of Alice", done.stdout)
        name, encoded = passwords.read_accounts(self.path)["alice"]
        self.assertEqual(name, "Alice")
        self.assertTrue(passwords.verify_password("second secret", encoded))
        self.assertFalse(passwords.verify_password("first secret", encoded))

    def test_refusals(self):
        bad_name = self.run_passwd(self.path, "not:a nick", stdin="pw\n")
        self.assertEqual(bad_name.returncode, 2)
        self.assertIn("bad NAME", bad_name.stderr)
        empty = self.run_passwd(self.path, "alice", stdin="\n")
        self.assertEqual(empty.returncode, 2)
        self.assertIn("empty", empty.stderr)
        spaced = self.run_passwd(self.path, "alice", stdin=" padded \n")
        self.assertEqual(spaced.returncode, 2)
        self.assertNotIn("padded", spaced.stderr + spaced.stdout)
        self.assertFalse(os.path.exists(self.path))

    def test_delete(self):
        self.run_passwd(self.path, "alice", stdin="pw-a\n")
        self.run_passwd(self.path, "bob", stdin="pw-b\n")
        done = self.run_passwd(self.path, "alice", "--delete")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(sorted(passwords.read_accounts(self.path)), ["bob"])
        again = self.run_passwd(self.path, "alice", "--delete")
        self.assertEqual(again.returncode, 1)
        self.assertIn("no account alice", again.stderr)


class PasswdTerminalTests(SynchronousTestCase):
    """At a terminal, ``twisted-chat-passwd`` asks twice and does not echo."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="chat-passwd-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "accounts")

    def run_on_pty(self, *answers):
        import fcntl
        import pty
        import select
        import termios
        import time

        controller, terminal = pty.openpty()

        def take_terminal():  # a new session whose controlling terminal is the pty
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        script = os.path.join(os.path.dirname(sys.executable), "twisted-chat-passwd")
        proc = subprocess.Popen([script, self.path, "alice"], stdin=terminal, stdout=terminal,
                                stderr=terminal, preexec_fn=take_terminal, close_fds=True)
        os.close(terminal)
        # Each answer is typed once its prompt has appeared.
        seen, pending = b"", list(zip((b"New password:", b"Again:"), answers))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([controller], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(controller, 1024)
                    except OSError:  # EIO: the process closed the terminal
                        break
                    if not chunk:
                        break
                    seen += chunk
                if pending and pending[0][0] in seen:
                    os.write(controller, pending.pop(0)[1].encode() + b"\n")
                if proc.poll() is not None and not ready:
                    break
        finally:
            os.close(controller)
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        return code, seen.decode("utf-8", "replace")

    def test_asks_twice_without_echo(self):
        code, screen = self.run_on_pty("terminal secret", "terminal secret")
        self.assertEqual(code, 0, screen)
        self.assertIn("New password:", screen)
        self.assertIn("Again:", screen)
        self.assertNotIn("terminal secret", screen)
        name, encoded = passwords.read_accounts(self.path)["alice"]
        self.assertTrue(passwords.verify_password("terminal secret", encoded))

    def test_mismatch_is_refused(self):
        code, screen = self.run_on_pty("one secret", "another secret")
        self.assertEqual(code, 2, screen)
        self.assertIn("the two passwords differ", screen)
        self.assertNotIn("secret", screen)
        self.assertFalse(os.path.exists(self.path))
