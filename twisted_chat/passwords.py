"""The account file: salted scrypt hashes, one account a line, and how to edit it.

Format (documented in docs/operations.rst)::

    # comments and blank lines are kept
    alice:$scrypt$ln=15,r=8,p=1$<salt>$<hash>

``NAME`` is a valid nick (so it never holds ``:``); the hash part is a PHC-style
string: ``ln`` is log2 of scrypt's cost N, ``r`` the block size, ``p`` the
parallelism, and salt (16 bytes) and hash (32 bytes) are base64 without padding.
Every entry carries its own parameters, so raising the default later leaves old
entries valid. Names are compared case-insensitively (NFKC + casefold, as nicks).

Pure standard library: the checker (twisted_chat.auth) and the
``twisted-chat-passwd`` command (twisted_chat.passwd) both use it.
"""

import base64
import hashlib
import hmac
import os
import tempfile
from typing import Dict, Optional, Tuple

from .commands import fold, valid_nick
from .errors import ChatError

SCHEME = "scrypt"
DEFAULT_LN = 15  # N = 32768: 32 MiB and roughly 0.1 s per check
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# A hostile or mistyped entry must not make one check eat the machine.
MAX_MEMORY = 128 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def check_password_text(password: str) -> None:
    """Raise ValueError for a password the chat protocol could not carry intact."""
    if not password:
        raise ValueError("the password is empty")
    if password != password.strip():
        raise ValueError("a password cannot start or end with white space")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in password):
        raise ValueError("a password cannot hold control characters")


def hash_password(password: str, ln: int = DEFAULT_LN, r: int = DEFAULT_R,
                  p: int = DEFAULT_P, salt: Optional[bytes] = None) -> str:
    """A new PHC-style scrypt string for ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, ln, r, p)
    return f"${SCHEME}$ln={ln},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def parse_hash(encoded: str) -> Tuple[int, int, int, bytes, bytes]:
    """(ln, r, p, salt, digest) of an encoded hash; ValueError if malformed."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != SCHEME:
        raise ValueError("not a $scrypt$ hash")
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        ln, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError) as e:
        raise ValueError(f"malformed $scrypt$ hash ({e})") from None
    if not (1 <= ln <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    if 128 * r * (2 ** ln) > MAX_MEMORY:
        raise ValueError("scrypt parameters need too much memory")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return ln, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; slow on purpose (run it off the reactor)."""
    ln, r, p, salt, digest = parse_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, ln, r, p, len(digest)), digest)


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int,
            length: int = HASH_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** ln, r=r, p=p,
                          maxmem=2 * MAX_MEMORY, dklen=length)


# Checked against for unknown names, so "no such account" costs as much time
# as "wrong password" and timing tells nobody which names exist.
DUMMY_HASH = (f"${SCHEME}$ln={DEFAULT_LN},r={DEFAULT_R},p={DEFAULT_P}"
              f"${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}")


def read_accounts(path: str) -> Dict[str, Tuple[str, str]]:
    """{folded name: (name, encoded hash)} from the file; ValueError naming a bad line."""
    accounts = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, encoded = line.partition(":")
            try:
                if not sep:
                    raise ValueError("expected NAME:HASH")
                try:
                    name = valid_nick(name.strip())
                except ChatError as e:
                    raise ValueError(f"bad name: {e.message}") from None
                parse_hash(encoded.strip())
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: {e}") from None
            accounts[fold(name)] = (name, encoded.strip())
    return accounts


def set_account(path: str, name: str, encoded: Optional[str]) -> bool:
    """Add or replace ``name``'s entry (or remove it when ``encoded`` is None).

    Other lines, comments included, are kept in order. The file is replaced
    atomically and a new one is readable by its owner only. Returns whether
    an entry for ``name`` existed before.
    """
    key = fold(name)
    lines, existed = [], False
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read().splitlines()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        old, mode = [], 0o600
    for line in old:
        entry_name, sep, _ = line.strip().partition(":")
        if sep and not line.lstrip().startswith("#") and fold(entry_name.strip()) == key:
            if not existed and encoded is not None:
                lines.append(f"{name}:{encoded}")
            existed = True
            continue
        lines.append(line)
    if not existed and encoded is not None:
        lines.append(f"{name}:{encoded}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".chat-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return existed
