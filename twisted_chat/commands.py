"""Parse client lines into command values, and validate nicks and room names.

Nothing here knows about sockets or rooms: a line of text goes in, a small
:class:`Command` (or a :class:`ChatError`) comes out.
"""

import functools
import unicodedata
from typing import NamedTuple, Optional

from .errors import ChatError

MAX_NICK = 24
MAX_ROOM = 32

# C0 controls except TAB, DEL, and C1 controls: stripped from every text a
# user sends before anybody else sees it (no terminal escape injection).
_CONTROL = {c: None for c in range(0x20) if c != 0x09}
_CONTROL[0x7F] = None
_CONTROL.update({c: None for c in range(0x80, 0xA0)})


def strip_controls(text: str) -> str:
    return text.translate(_CONTROL)


# Cached: the same few nicks and rooms are folded and checked for every
# line (an IRC PRIVMSG names its channel each time); bounded, and a name
# that raises is not kept.
@functools.lru_cache(maxsize=8192)
def fold(name: str) -> str:
    """The comparison key of a nick or room: NFKC, then casefold."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_name_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    # Marks (M*) after the first letter keep scripts such as Devanagari usable.
    return cat[0] in "LM" or cat == "Nd" or ch in "_-"


def valid_nick(name: str) -> str:
    """Return the normalised nick, or raise ChatError(nick-invalid)."""
    nick = unicodedata.normalize("NFKC", name)
    if not (1 <= len(nick) <= MAX_NICK):
        raise ChatError("nick-invalid", f"a nick has 1 to {MAX_NICK} characters")
    if not _is_letter(nick[0]) or not all(_is_name_char(c) for c in nick):
        raise ChatError(
            "nick-invalid",
            "a nick starts with a letter and holds only letters, digits, '_' and '-'",
        )
    return nick


@functools.lru_cache(maxsize=8192)
def valid_room(name: str) -> str:
    """Return the normalised room name (without '#'), or raise ChatError(room-invalid)."""
    room = unicodedata.normalize("NFKC", name)
    if room.startswith("#"):
        room = room[1:]
    if not (1 <= len(room) <= MAX_ROOM):
        raise ChatError("room-invalid", f"a room name has 1 to {MAX_ROOM} characters")
    if not all(_is_name_char(c) for c in room):
        raise ChatError(
            "room-invalid", "a room name holds only letters, digits, '_' and '-'"
        )
    return room


MAX_TOPIC = 300
MAX_KEY = 32
MAX_REASON = 300

# /set ROOM FLAG VALUE: the flags and what their values may be.
FLAGS = ("topic-lock", "moderated", "invite-only", "key", "limit")


class Command(NamedTuple):
    """One parsed client line: ``name`` is 'say' for a chat line."""

    name: str
    arg: Optional[str] = None
    text: Optional[str] = None
    count: Optional[int] = None  # /history: how many messages
    before: Optional[int] = None  # /history before ID
    room: Optional[str] = None  # the room a command names
    value: object = None  # /set ROOM FLAG VALUE: True/False, a key, a number, or None (off)


USAGE = {
    "nick": "/nick NAME",
    "join": "/join ROOM [KEY]",
    "part": "/part [ROOM] [REASON]",
    "say": "/say ROOM TEXT",
    "describe": "/describe ROOM TEXT",
    "who": "/who [ROOM]",
    "rooms": "/rooms",
    "msg": "/msg NICK TEXT",
    "me": "/me TEXT",
    "topic": "/topic ROOM [TEXT | -]",
    "op": "/op ROOM NICK",
    "deop": "/deop ROOM NICK",
    "voice": "/voice ROOM NICK",
    "devoice": "/devoice ROOM NICK",
    "kick": "/kick ROOM NICK [REASON]",
    "ban": "/ban ROOM [NICK]",
    "unban": "/unban ROOM ENTRY",
    "invite": "/invite NICK ROOM",
    "set": "/set ROOM [topic-lock|moderated|invite-only on|off | key KEY|off | limit N|off]",
    "mode": "/mode json|text",
    "history": "/history [ROOM [N]] | /history ROOM before ID [N]",
    "ping": "/ping [TOKEN]",
    "quit": "/quit [REASON]",
    "help": "/help",
    "login": "/login NAME PASSWORD",
}

HELP = [
    "Type a line to talk to your active room (the last you joined); start it with // to "
    "send a literal /.",
    *(f"{usage}" for usage in USAGE.values()),
]


def _usage(name: str) -> ChatError:
    return ChatError("usage", f"usage: {USAGE[name]}")


def _split(rest: str, n: int):
    """The first ``n`` words of ``rest`` and the rest of it (stripped), or
    None if it has fewer than ``n`` words."""
    words = rest.split(None, n)
    if len(words) < n:
        return None
    tail = words[n].strip() if len(words) > n else ""
    return words[:n], tail


def parse(line: str) -> Optional[Command]:
    """Turn one decoded, control-stripped line into a Command.

    Returns None for a line with nothing to say (empty or blank).
    Raises ChatError for unknown commands and malformed arguments.
    """
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Command("say", text=line)
    if line.startswith("//"):
        return Command("say", text=line[1:])
    head, _, rest = line[1:].partition(" ")
    name = head.lower()
    rest = rest.strip()
    if name not in USAGE:
        raise ChatError("unknown-command", f"unknown command /{head}; try /help")
    words = rest.split()
    if name == "nick":
        if len(words) != 1:
            raise _usage(name)
        return Command(name, arg=words[0])
    if name == "join":
        if len(words) not in (1, 2):
            raise _usage(name)
        return Command(name, arg=words[0], text=words[1] if len(words) == 2 else None)
    if name == "part":
        if not words:
            return Command(name)
        room, _, reason = rest.partition(" ")
        return Command(name, room=room, text=reason.strip()[:MAX_REASON] or None)
    if name in ("say", "describe"):
        split = _split(rest, 1)
        if split is None or not split[1]:
            raise _usage(name)
        return Command(name, room=split[0][0], text=split[1])
    if name == "who":
        if len(words) > 1:
            raise _usage(name)
        return Command(name, arg=words[0] if words else None)
    if name == "msg":
        target, _, text = rest.partition(" ")
        if not target or not text.strip():
            raise _usage(name)
        return Command(name, arg=target, text=text.strip())
    if name == "me":
        if not rest:
            raise _usage(name)
        return Command(name, text=rest)
    if name == "topic":
        split = _split(rest, 1)
        if split is None:
            raise _usage(name)
        (room,), text = split
        if not text:
            return Command(name, room=room)
        if len(text) > MAX_TOPIC:
            raise ChatError("usage", f"a topic has at most {MAX_TOPIC} characters")
        return Command(name, room=room, text="" if text == "-" else text)
    if name in ("op", "deop", "voice", "devoice", "unban"):
        if len(words) != 2:
            raise _usage(name)
        return Command(name, room=words[0], arg=words[1])
    if name == "kick":
        split = _split(rest, 2)
        if split is None:
            raise _usage(name)
        (room, nick), reason = split
        return Command(name, room=room, arg=nick, text=reason[:MAX_REASON] or None)
    if name == "ban":
        if len(words) not in (1, 2):
            raise _usage(name)
        return Command(name, room=words[0], arg=words[1] if len(words) == 2 else None)
    if name == "invite":
        if len(words) != 2:
            raise _usage(name)
        return Command(name, arg=words[0], room=words[1])
    if name == "set":
        return _set(words)
    if name == "login":
        # Never echo the arguments: the password is among them.
        if len(words) < 2:
            raise _usage(name)
        return Command(name, arg=words[0], text=rest.split(None, 1)[1])
    if name == "mode":
        if len(words) != 1 or words[0].lower() not in ("json", "text"):
            raise _usage(name)
        return Command(name, arg=words[0].lower())
    if name == "history":
        return _history(words)
    if name in ("ping", "quit"):
        return Command(name, text=rest)
    return Command(name)  # rooms, help: arguments are ignored


def _positive(word: str, command: str = "history") -> int:
    # isdecimal, not int(): no signs, spaces or underscores; the length bound
    # keeps a huge number from costing anything.
    if not (word.isascii() and word.isdecimal() and len(word) <= 18) or int(word) < 1:
        raise _usage(command)
    return int(word)


def _history(words) -> Command:
    """/history | /history ROOM [N] | /history ROOM before ID [N]  (N is capped by the hub)."""
    if not words:
        return Command("history")
    room, rest = words[0], words[1:]
    if rest and rest[0].lower() == "before":
        if len(rest) not in (2, 3):
            raise _usage("history")
        count = _positive(rest[2]) if len(rest) == 3 else None
        return Command("history", room=room, count=count, before=_positive(rest[1]))
    if len(rest) > 1:
        raise _usage("history")
    return Command("history", room=room, count=_positive(rest[0]) if rest else None)


def _set(words) -> Command:
    """/set ROOM | /set ROOM FLAG VALUE."""
    if len(words) == 1:
        return Command("set", room=words[0])
    if len(words) != 3 or words[1].lower() not in FLAGS:
        raise _usage("set")
    flag, word = words[1].lower(), words[2]
    off = word.lower() == "off"
    if flag in ("topic-lock", "moderated", "invite-only"):
        if word.lower() not in ("on", "off"):
            raise _usage("set")
        value = not off
    elif flag == "key":
        if not off and len(word) > MAX_KEY:
            raise ChatError("usage", f"a room key has at most {MAX_KEY} characters")
        value = None if off else word
    else:
        value = None if off else _positive(word, "set")
    return Command("set", room=words[0], arg=flag, value=value)
