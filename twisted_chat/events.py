"""Server events, and the line face's two renderings of them: JSON lines and
readable text lines.

An :class:`Event` is built once by the core and rendered at most once per
rendering, however many connections receive it: the encoded bytes (with
their framing, here the CRLF terminator) are cached on the event. Renderings
are a registry keyed by mode (:mod:`twisted_chat.delivery.render`): ``text``
and ``json`` are registered here, other faces register their own.
"""

import json
import time
from datetime import datetime, timezone

from .delivery.render import register_rendering
from .delivery.render import render as _render

JSON = "json"
TEXT = "text"


def rfc3339(t: float) -> str:
    """UTC time with milliseconds: 2026-11-24T04:12:00.123Z."""
    ms = int(t * 1000)
    stamp = datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def _clock(t: float) -> str:
    # Text mode is for people at a terminal: the server's local wall clock.
    return time.strftime("%H:%M", time.localtime(t))


def _dated(t: float) -> str:
    # Replayed history may be days old: its lines carry the date too.
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _names(f) -> str:
    nicks = f["nicks"]
    if not nicks:
        return "(nobody)"
    ops, voiced = f.get("ops"), f.get("voiced")
    if not ops and not voiced:
        return ", ".join(nicks)
    ops, voiced = set(ops or ()), set(voiced or ())
    return ", ".join(("@" if n in ops else "+" if n in voiced else "") + n for n in nicks)


def _at(f) -> str:
    """``[HH:MM] #room`` — every room line says its room (a person may be in several)."""
    return f"[{_clock(f['_t'])}] #{f['room']}"


def _part_text(f) -> str:
    return f"{_at(f)} -- {f['nick']} left ({f['reason']})"


def _presence_text(f) -> str:
    parts = []
    if f["joined"]:
        parts.append(f"{len(f['joined'])} joined ({', '.join(f['joined'])})")
    if f["left"]:
        parts.append(f"{len(f['left'])} left ({', '.join(f['left'])})")
    return f"{_at(f)} -- {'; '.join(parts) or 'no change'}"


def _message_text(f) -> str:
    when = _dated(f["_t"]) if f.get("history") else _clock(f["_t"])
    if f.get("action"):
        return f"[{when}] #{f['room']} * {f['nick']} {f['text']}"
    return f"[{when}] #{f['room']} <{f['nick']}> {f['text']}"


def _history_end_text(f) -> str:
    count = f["count"]
    room = f"#{f['room']}"
    if not count:
        return f"-- no earlier messages in {room}"
    line = f"-- end of history: {count} message{'s' if count != 1 else ''} in {room}"
    if count >= f["limit"]:
        line += f"; older ones: /history {f['room']} before {f['oldest']}"
    return line + " --"


def _welcome_text(f) -> str:
    lines = [f"-- welcome to {f['server']} (twisted-chat {f['version']}, protocol "
             f"{f['protocol']}); you are {f['nick']}"]
    if f.get("motd"):
        lines.append(f"-- {f['motd']}")
    lines.append("-- type /help for commands")
    return "\r\n".join(lines)


def _topic_text(f) -> str:
    if not f["topic"]:
        if f.get("by"):
            return f"{_at(f)} -- {f['by']} cleared the topic"
        return f"-- #{f['room']} has no topic"
    return f"{_at(f)} -- topic: {f['topic']} (set by {f['by']})"


def _mode_text(f) -> str:
    mode, on = f["mode"], f["on"]
    if mode in ("op", "voice"):
        what = f"{'gives' if on else 'takes'} {mode} {'to' if on else 'from'} {f['nick']}"
    elif mode == "ban":
        what = f"{'bans' if on else 'unbans'} {f['nick']}"
    elif mode == "limit":
        what = f"sets limit {f['value']}" if on else "sets limit off"
    else:
        what = f"sets {mode} {'on' if on else 'off'}"
    return f"{_at(f)} -- {f['by']} {what}"


def _kick_text(f) -> str:
    reason = f" ({f['reason']})" if f.get("reason") else ""
    return f"{_at(f)} -- {f['by']} kicked {f['nick']}{reason}"


def _flags_text(f) -> str:
    key = f["key"]
    key = "on" if key is True else "off" if not key else f"on ({key})"
    limit = f["limit"] if f["limit"] is not None else "off"
    return (f"-- #{f['room']}: topic-lock {'on' if f['topic-lock'] else 'off'}, moderated "
            f"{'on' if f['moderated'] else 'off'}, invite-only "
            f"{'on' if f['invite-only'] else 'off'}, key {key}, limit {limit}")


def _bans_text(f) -> str:
    if not f["bans"]:
        return f"-- #{f['room']}: no bans"
    return f"-- #{f['room']} bans: " + ", ".join(
        f"{b['entry']} ({b['nick']}, by {b['by']})" for b in f["bans"])


_TEXT = {
    "welcome": _welcome_text,
    "join": lambda f: f"{_at(f)} -- {f['nick']} joined",
    "part": _part_text,
    "quit": lambda f: f"[{_clock(f['_t'])}] -- {f['nick']} quit ({f['reason']})",
    "nick": lambda f: f"[{_clock(f['_t'])}] -- {f['old']} is now known as {f['new']}",
    "presence": _presence_text,
    "names": lambda f: f"-- in #{f['room']}: {_names(f)}",
    "rooms": lambda f: "-- rooms: "
    + (", ".join(f"{r['name']} ({r['members']})" for r in f["rooms"]) or "(none)"),
    "message": _message_text,
    "history-end": _history_end_text,
    "private": lambda f: f"[{_clock(f['_t'])}] *{f['from']}* {f['text']}",
    "topic": _topic_text,
    "mode": _mode_text,
    "kick": _kick_text,
    "invite": lambda f: f"[{_clock(f['_t'])}] -- {f['by']} invites you to #{f['room']}"
    f" (/join {f['room']})",
    "flags": _flags_text,
    "bans": _bans_text,
    "error": lambda f: f"!! {f['code']}: {f['message']}",
    "info": lambda f: f"-- {f['message']}",
    "pong": lambda f: f"-- pong {f['token']}".rstrip(),
    "bye": lambda f: f"-- bye: {f['reason']}",
}


class Event:
    """One server event: a type and its fields.

    Fields whose names start with ``_`` are private to the server (the float
    time behind ``ts``) and never rendered.
    """

    __slots__ = ("type", "fields", "_enc")

    def __init__(self, type: str, fields: dict):
        self.type = type
        self.fields = fields
        self._enc = None  # mode -> its bytes, once rendered in it

    @classmethod
    def timed(cls, type: str, t: float, **fields) -> "Event":
        """An event stamped with ``ts`` from the float time ``t``.

        ``ts`` goes last unless the caller reserves its place with ``ts=None``.
        """
        fields["ts"] = rfc3339(t)
        fields["_t"] = t
        return cls(type, fields)

    def to_dict(self) -> dict:
        d = {"type": self.type}
        d.update((k, v) for k, v in self.fields.items() if not k.startswith("_"))
        return d

    def encode(self, mode: str, recipient=None) -> bytes:
        """This event as wire bytes in the rendering ``mode``, framing included;
        rendered once per rendering (or for ``recipient``, the outlet, where
        the rendering says the event is personal)."""
        cache = self._enc
        if cache is not None:
            data = cache.get(mode)
            if data is not None:
                return data
        return _render(self, mode, recipient)

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {self.to_dict()!r})"


def error(code: str, message: str) -> Event:
    return Event("error", {"code": code, "message": message})


def info(message: str) -> Event:
    return Event("info", {"message": message})


# Core events the line protocol does not carry (docs/protocol.rst lists what
# it does): both renderings make nothing of them, not a line.
UNSHOWN = frozenset({"away", "account", "realname"})


def _json_line(event: Event, recipient=None) -> bytes:
    if event.type in UNSHOWN:
        return b""
    return (json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
            + "\r\n").encode("utf-8")


def _text_line(event: Event, recipient=None) -> bytes:
    if event.type in UNSHOWN:
        return b""
    return (_TEXT[event.type](event.fields) + "\r\n").encode("utf-8")


register_rendering(JSON, _json_line)
register_rendering(TEXT, _text_line)
