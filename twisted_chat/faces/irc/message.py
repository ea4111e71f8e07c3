"""IRC lines in and out: IRCv3 message tags, source prefix, command, params.

Parsing is strict about what can hurt (length, encoding) and lenient about
the rest, as modern.ircdocs.horse asks: several spaces between params are
one, a trailing ``:`` param may hold anything but CR, LF and NUL.

Building is the one place every outgoing line passes through, so it is where
CR, LF and NUL are taken out of every part (a nick, a topic, a message from
another face): no text can end a line early and smuggle in a second one.
"""

from typing import Dict, List, NamedTuple, Optional

# The non-tag part of a line: 512 bytes with its CRLF (RFC 1459), so 510
# without. Tags a client sends: at most 4094 bytes with the '@' and the
# space after them (IRCv3 message-tags).
MAX_BODY = 510
MAX_CLIENT_TAGS = 4094
# Longest line the reader keeps before it answers ERR_INPUTTOOLONG and skips
# to the next newline (the terminator not counted).
MAX_LINE = MAX_CLIENT_TAGS + 1 + MAX_BODY

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_UNSAFE = str.maketrans({"\r": " ", "\n": " ", "\0": None})


class LineTooLong(ValueError):
    """The line is longer than IRC allows (ERR_INPUTTOOLONG)."""


class BadMessage(ValueError):
    """Not an IRC message (no command); ignored by servers."""


class Message(NamedTuple):
    """One parsed IRC line."""

    command: str  # upper-cased; a numeric stays as its three digits
    params: List[str]
    tags: Dict[str, str] = {}
    source: Optional[str] = None


def unescape_tag(value: str) -> str:
    out = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch == "\\":
            i += 1
            if i < n:
                out.append(_TAG_UNESCAPES.get(value[i], value[i]))
            # A lone trailing backslash is dropped.
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def escape_tag(value: str) -> str:
    return "".join(_TAG_ESCAPES.get(ch, ch) for ch in value.replace("\0", ""))


def parse_tags(raw: str) -> Dict[str, str]:
    tags = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        tags[key] = unescape_tag(value)
    return tags


def split_tags(line: bytes):
    """(tag bytes or b"", the rest of the line): where the length limits apply."""
    if line[:1] == b"@":
        space = line.find(b" ")
        if space < 0:
            return line, b""
        return line[:space], line[space + 1:].lstrip(b" ")
    return b"", line


def check_length(line: bytes) -> None:
    """Raise LineTooLong if ``line`` (without its terminator) breaks the limits."""
    tags, body = split_tags(line)
    if len(tags) + 1 > MAX_CLIENT_TAGS or len(body) > MAX_BODY:
        raise LineTooLong()


def parse(line: str) -> Message:
    """One decoded line (no CR/LF) into a Message; raise BadMessage if it has no command."""
    tags: Dict[str, str] = {}
    source = None
    rest = line.lstrip(" ")
    if rest.startswith("@"):
        raw, _, rest = rest[1:].partition(" ")
        tags = parse_tags(raw)
        rest = rest.lstrip(" ")
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing = None
    head, sep, tail = rest.partition(" :")
    if rest.startswith(":"):
        head, trailing = "", rest[1:]
    elif sep:
        trailing = tail
    else:
        head = rest
    words = head.split(" ")
    words = [w for w in words if w]
    if not words:
        raise BadMessage("no command")
    command, params = words[0].upper(), words[1:]
    if trailing is not None:
        params.append(trailing)
    return Message(command, params, tags, source)


def safe(text: str) -> str:
    """``text`` without CR, LF or NUL (CR and LF become spaces)."""
    return text.translate(_UNSAFE)


def build(command: str, params=(), source: Optional[str] = None,
          tags: Optional[Dict[str, str]] = None) -> str:
    """One IRC line without its CRLF. Every part is made safe: CR, LF and
    NUL never pass, a middle param never holds a space or starts with ':'
    (it would change the parsing), the last param gets ':' when it needs it."""
    parts = []
    if tags:
        parts.append("@" + ";".join(
            escape_tag(k) + ("=" + escape_tag(v) if v else "") for k, v in tags.items()))
    if source:
        parts.append(":" + safe(source).replace(" ", ""))
    parts.append(safe(command).replace(" ", ""))
    params = [safe(p) for p in params]
    for p in params[:-1]:
        p = p.replace(" ", "").lstrip(":") or "*"
        parts.append(p)
    if params:
        last = params[-1]
        if not last or " " in last or last.startswith(":"):
            last = ":" + last
        parts.append(last)
    return " ".join(parts)


def cut_utf8(data: bytes, limit: int) -> int:
    """The largest index <= limit that does not split a UTF-8 sequence."""
    if len(data) <= limit:
        return len(data)
    i = limit
    while i > 0 and (data[i] & 0xC0) == 0x80:
        i -= 1
    return i


def split_text(text: str, room: int) -> List[str]:
    """``text`` in pieces of at most ``room`` UTF-8 bytes, cut at a space when
    one is near the end, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= room:
        return [text]
    room = max(room, 4)
    pieces = []
    while len(data) > room:
        cut = cut_utf8(data, room)
        space = data.rfind(b" ", cut // 2, cut)
        if space > 0:
            pieces.append(data[:space].decode("utf-8"))
            data = data[space + 1:]
        else:
            pieces.append(data[:cut].decode("utf-8"))
            data = data[cut:]
    if data:
        pieces.append(data.decode("utf-8"))
    return pieces
