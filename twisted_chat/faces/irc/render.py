"""Hub events as IRC lines.

:class:`Renderer` turns one :class:`~twisted_chat.events.Event` into the IRC
lines a connection receives (without CRLF). What a line looks like depends on
the event and on two things of the recipient only: its capabilities (tags)
and, for numerics, its nick. Events that are the same for every recipient
with the same tag capabilities (a room's PRIVMSG, JOIN, PART...) are cached
by the caller per (event, tag variant); see :meth:`Renderer.shared`.

:class:`Renderings` puts them into the delivery layer's registry
(:mod:`twisted_chat.delivery.render`): one mode per server and tag variant, so
a room's share of a turn is rendered and encoded once per variant and reaches
the IRC members of the room as the line face's members get theirs (one
``bytes`` object for all, the express sends to idle sockets).

Rooms are channels: the room ``lobby`` is ``#lobby``. Every user's source is
``nick!nick@HOST`` (the server name as host): the hub does not keep idents or
addresses per face, and nobody's address is shown to others.
"""

import itertools
import time
import weakref
from datetime import datetime, timezone
from typing import Dict, List, Optional

from ...delivery.render import register_rendering
from .message import MAX_BODY, build, safe, split_text
from .numerics import NUMERIC

# Events whose lines depend only on the event and the tag variant.
SHARED = frozenset({"join", "part", "quit", "nick", "message", "private", "mode", "kick",
                    "presence"})

MODE_LETTERS = {"op": "o", "voice": "v", "ban": "b", "topic-lock": "t", "moderated": "m",
                "invite-only": "i", "key": "k", "limit": "l"}

CTCP = "\x01"


def channel(room: str) -> str:
    return "#" + room


def iso_time(t: float) -> str:
    ms = int(t * 1000)
    stamp = datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def ban_mask(nick: str) -> str:
    return f"{nick}!*@*"


class Context:
    """What rendering needs to know of one recipient (a connection keeps one)."""

    def __init__(self, nick: str = "*", caps=()):
        self.nick = nick
        self.caps = set(caps)
        # The hub answers a join with the joiner's own JOIN, names, and the
        # topic if any, in one go: that topic is numerics 332/333, any other
        # is a TOPIC change. ``joined`` is the room of our own JOIN just
        # rendered, ``after_names`` the room whose join names just were;
        # every other event, and the end of the turn, clear them.
        self.joined: Optional[str] = None
        self.after_names: Optional[str] = None

    @property
    def variant(self):
        caps = self.caps
        return ("server-time" in caps, "message-tags" in caps, "account-tag" in caps,
                "extended-join" in caps)


class Renderer:
    """Renders events for one server (its name is the source of numerics)."""

    def __init__(self, server: str, account_of=None):
        self.server = server.replace(" ", "-") or "twisted-chat"
        self.host = self.server
        # nick -> the account it is logged in to, or None (account-tag,
        # extended-join): asked when an event is rendered.
        self.account_of = account_of or (lambda nick: None)
        self._account_tag = self._extended_join = False

    def source(self, nick: str) -> str:
        if nick == self.server:
            return self.server
        return f"{nick}!{nick}@{self.host}"

    # -- the two entry points ------------------------------------------------

    def shared(self, event, variant) -> List[str]:
        """The lines of an event in SHARED for every recipient of ``variant``
        = (server-time, message-tags, account-tag, extended-join)."""
        f = event.fields
        server_time, message_tags, self._account_tag, self._extended_join = variant
        tags = {}
        if server_time and "_t" in f:
            tags["time"] = iso_time(f["_t"])
        return getattr(self, "_" + event.type.replace("-", "_"))(f, tags, message_tags,
                                                                 server_time)

    def direct(self, event, ctx: Context) -> List[str]:
        """The lines of any other event, for the recipient ``ctx``."""
        method = getattr(self, "_direct_" + event.type.replace("-", "_"), None)
        if method is None:
            return []
        return method(event.fields, ctx)

    def numeric(self, ctx: Context, name: str, *params) -> str:
        return build(NUMERIC.get(name, name), [ctx.nick, *params], source=self.server)

    def notice(self, ctx: Context, text: str) -> str:
        return build("NOTICE", [ctx.nick, text], source=self.server)

    # -- shared events ---------------------------------------------------------

    def _join(self, f, tags, msgtags, st):
        params = [channel(f["room"])]
        if self._extended_join:
            params += [f.get("_account") or "*", f.get("_realname") or f["nick"]]
        return [build("JOIN", params, self.source(f["nick"]), tags)]

    def _part(self, f, tags, msgtags, st):
        reason = f.get("reason") or ""
        params = [channel(f["room"])]
        if reason.startswith("left: "):
            params.append(reason[len("left: "):])
        elif reason not in ("left", ""):
            params.append(reason)
        return [build("PART", params, self.source(f["nick"]), tags)]

    def _quit(self, f, tags, msgtags, st):
        reason = f.get("reason") or "quit"
        if reason.startswith("quit: "):
            reason = "Quit: " + reason[len("quit: "):]
        else:
            reason = reason[:1].upper() + reason[1:]
        return [build("QUIT", [reason], self.source(f["nick"]), tags)]

    def _nick(self, f, tags, msgtags, st):
        return [build("NICK", [f["new"]], self.source(f["old"]), tags)]

    def _kick(self, f, tags, msgtags, st):
        reason = f.get("reason") or f["nick"]
        return [build("KICK", [channel(f["room"]), f["nick"], reason], self.source(f["by"]),
                      tags)]

    def _mode(self, f, tags, msgtags, st):
        letter = MODE_LETTERS.get(f["mode"])
        if letter is None:
            return []
        change = ("+" if f["on"] else "-") + letter
        params = [channel(f["room"]), change]
        if letter in "ov":
            params.append(f["nick"])
        elif letter == "b":
            params.append(ban_mask(f.get("nick") or "*"))
        elif letter == "k":
            params.append("*")  # the key itself is never broadcast
        elif letter == "l" and f["on"]:
            params.append(str(f.get("value")))
        return [build("MODE", params, self.source(f["by"]), tags)]

    def _presence(self, f, tags, msgtags, st):
        ch = channel(f["room"])
        lines = [build("JOIN", [ch], self.source(n), tags) for n in f.get("joined", ())]
        lines += [build("PART", [ch], self.source(n), tags) for n in f.get("left", ())]
        return lines

    def _message(self, f, tags, msgtags, st):
        return self._privmsg(channel(f["room"]), f["nick"], f, tags, msgtags, st)

    def _private(self, f, tags, msgtags, st):
        return self._privmsg(f["to"], f["from"], f, tags, msgtags, st)

    def _privmsg(self, target, nick, f, tags, msgtags, st):
        text = f["text"]
        if f.get("history") and not st:
            # No server-time: the replayed line says when it was said.
            text = time.strftime("[%Y-%m-%d %H:%M] ", time.gmtime(f["_t"])) + text
        source = self.source(nick)
        head = f":{source} PRIVMSG {target} :"
        room = MAX_BODY - len(head.encode("utf-8"))
        action = f.get("action")
        if action:
            room -= len(CTCP + "ACTION " + CTCP)
        lines = []
        # A UTF-8 character is at most 4 bytes: most texts need no encoding
        # to know that they fit in one line.
        pieces = [text] if 4 * len(text) <= room else split_text(text, room)
        for i, piece in enumerate(pieces):
            line_tags = dict(tags)
            if msgtags and i == 0 and f.get("id") is not None:
                line_tags["msgid"] = str(f["id"])
            if self._account_tag and not f.get("history"):
                # The sender's account when it spoke, carried by the event: the
                # nick may belong to somebody else by the time it is rendered.
                account = f.get("_account")
                if account:
                    line_tags["account"] = account
            if action:
                piece = f"{CTCP}ACTION {piece}{CTCP}"
            if line_tags:
                lines.append(build("PRIVMSG", [target, piece], source, line_tags))
            else:
                # build()'s line, made in one piece (every message of a room
                # takes this way once per rendering): nick and channel are
                # valid names, without space, ':' or control characters, and
                # the whole line is made safe at once: CR, LF and NUL never
                # pass.
                if not piece or " " in piece or piece[0] == ":":
                    piece = ":" + piece
                lines.append(safe(f":{source} PRIVMSG {target} {piece}"))
        return lines

    # -- direct events ----------------------------------------------------------

    def _direct_names(self, f, ctx):
        # Every joiner of a room gets its names: at 10,000 members, one joiner
        # in a join storm. So the words are the nicks' list as it comes, with
        # the few prefixed ones changed in place, cut into chunks by _pack;
        # each RPL_NAMREPLY is its head and a chunk (as build would make it).
        prefix = _prefixes(f.get("ops", ()), f.get("voiced", ()), "multi-prefix" in ctx.caps)
        if "userhost-in-names" in ctx.caps:
            source = self.source
            words = [prefix.get(n, "") + source(n) for n in f["nicks"]]
        else:
            words = _prefixed(f["nicks"], prefix)
        ch = channel(f["room"])
        head = build(NUMERIC["RPL_NAMREPLY"], [ctx.nick, "=", ch, ""], source=self.server)
        room = MAX_BODY - len(head.encode("utf-8"))
        lines = []
        if words:
            # Made safe as build makes each parameter, once for all of them.
            for chunk in _pack(safe(" ".join(words)), room):
                # build's last parameter: ':' only where it needs one.
                lines.append(head + chunk if not chunk or " " in chunk or chunk[0] == ":"
                             else head[:-1] + chunk)
        lines.append(self.numeric(ctx, "RPL_ENDOFNAMES", ch, "End of /NAMES list"))
        if ctx.joined == f["room"]:
            ctx.after_names = f["room"]
        return lines

    def _direct_topic(self, f, ctx):
        ch = channel(f["room"])
        if ctx.after_names == f["room"]:
            if not f.get("topic"):
                return [self.numeric(ctx, "RPL_NOTOPIC", ch, "No topic is set")]
            return [self.numeric(ctx, "RPL_TOPIC", ch, f["topic"]),
                    self.numeric(ctx, "RPL_TOPICWHOTIME", ch, f.get("by") or self.server,
                                 str(int(f.get("_t") or 0)))]
        tags = {"time": iso_time(f["_t"])} if "server-time" in ctx.caps and "_t" in f else None
        return [build("TOPIC", [ch, f.get("topic") or ""], self.source(f.get("by") or
                                                                      self.server), tags)]

    def _direct_away(self, f, ctx):
        """One's own away state as 305/306; another's as AWAY (away-notify)."""
        message = f.get("message")
        if f["nick"] == ctx.nick:
            if message:
                return [self.numeric(ctx, "RPL_NOWAWAY", "You have been marked as being away")]
            return [self.numeric(ctx, "RPL_UNAWAY", "You are no longer marked as being away")]
        if "away-notify" not in ctx.caps:
            return []
        tags = {"time": iso_time(f["_t"])} if "server-time" in ctx.caps and "_t" in f else None
        return [build("AWAY", [message] if message else [], self.source(f["nick"]), tags)]

    def _direct_account(self, f, ctx):
        """account-notify: a neighbour logged in (the core has no logout)."""
        if "account-notify" not in ctx.caps:
            return []
        return [build("ACCOUNT", [f.get("account") or "*"], self.source(f["nick"]))]

    def _direct_realname(self, f, ctx):
        """setname: a neighbour's (or one's own) new real name."""
        if "setname" not in ctx.caps:
            return []
        return [build("SETNAME", [f.get("realname") or f["nick"]], self.source(f["nick"]))]

    def _direct_invite(self, f, ctx):
        return [build("INVITE", [ctx.nick, channel(f["room"])], self.source(f["by"]))]

    def _direct_flags(self, f, ctx):
        letters, args = "n", []
        for name, letter in (("topic-lock", "t"), ("moderated", "m"), ("invite-only", "i")):
            if f.get(name):
                letters += letter
        key = f.get("key")
        if key:
            letters += "k"
            args.append(key if isinstance(key, str) else "*")
        if f.get("limit") is not None:
            letters += "l"
            args.append(str(f["limit"]))
        return [self.numeric(ctx, "RPL_CHANNELMODEIS", channel(f["room"]), "+" + letters, *args)]

    def _direct_bans(self, f, ctx):
        ch = channel(f["room"])
        lines = [self.numeric(ctx, "RPL_BANLIST", ch, b["entry"], b.get("by") or self.server,
                              str(int(_seconds(b.get("ts")))))
                 for b in f.get("bans", ())]
        lines.append(self.numeric(ctx, "RPL_ENDOFBANLIST", ch, "End of channel ban list"))
        return lines

    def _direct_rooms(self, f, ctx):
        lines = [self.numeric(ctx, "RPL_LISTSTART", "Channel", "Users  Name")]
        for r in f["rooms"]:
            lines.append(self.numeric(ctx, "RPL_LIST", channel(r["name"]), str(r["members"]),
                                      r.get("topic") or ""))
        lines.append(self.numeric(ctx, "RPL_LISTEND", "End of /LIST"))
        return lines

    def _direct_history_end(self, f, ctx):
        if not f.get("count"):
            return []
        return [self.notice(ctx, f"end of history: {f['count']} earlier messages of "
                                 f"{channel(f['room'])}")]

    def _direct_error(self, f, ctx):
        return [self.notice(ctx, f"{f['code']}: {f['message']}")]

    def _direct_info(self, f, ctx):
        return [self.notice(ctx, f["message"])]

    def _direct_pong(self, f, ctx):
        return [build("PONG", [self.server, f.get("token") or self.server], self.server)]

    def _direct_bye(self, f, ctx):
        return [build("ERROR", [f"Closing link: {f.get('reason') or 'bye'}"])]


def _seconds(ts) -> float:
    if isinstance(ts, (int, float)):
        return ts
    if isinstance(ts, str):
        try:
            return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=timezone.utc).timestamp()
        except ValueError:
            return 0
    return 0


def _prefixes(ops, voiced, multi: bool) -> Dict[str, str]:
    """NAMES' prefixes by nick: ``@`` operator, ``+`` voiced (both only with
    multi-prefix)."""
    prefix = dict.fromkeys(voiced, "+")
    for nick in ops:
        prefix[nick] = "@+" if multi and nick in prefix else "@"
    return prefix


def _prefixed(nicks: List[str], prefix: Dict[str, str]) -> List[str]:
    """NAMES' words: each nick with its prefix."""
    if not prefix:
        return list(nicks)
    if len(prefix) > 16:
        return [prefix[n] + n if n in prefix else n for n in nicks]
    # A few prefixed members in a big room: find them rather than look every
    # nick up (list.index runs in C).
    words = list(nicks)
    for nick, p in prefix.items():
        try:
            i = words.index(nick)
        except ValueError:  # not among the names (the event says who is)
            continue
        words[i] = p + nick
    return words


def _pack(text: str, room: int) -> List[str]:
    """``text``, space-separated words, in runs of whole words of at most
    ``room`` bytes each (a word longer than that alone)."""
    if not text.isascii():
        return _pack_words(text.split(" "), room)
    # One character, one byte: each chunk ends at the last space that fits
    # (str.rfind, in C), as many words as fit, as _pack_words packs them.
    chunks, start, end = [], 0, len(text)
    while end - start > room:
        cut = text.rfind(" ", start, start + room + 1)
        if cut <= start:  # a word longer than room: alone
            cut = text.find(" ", start)
            if cut < 0:
                break
        chunks.append(text[start:cut])
        start = cut + 1
    chunks.append(text[start:])
    return chunks


def _pack_words(words: List[str], room: int) -> List[str]:
    chunks, current, size = [], [], 0
    for w in words:
        n = len(w.encode("utf-8"))
        if current and size + 1 + n > room:
            chunks.append(" ".join(current))
            current, size = [], 0
        size += n + (1 if current else 0)
        current.append(w)
    if current or not chunks:
        chunks.append(" ".join(current))
    return chunks


def isupport_lines(tokens: List[str], per_line: int = 13) -> List[List[str]]:
    """RPL_ISUPPORT's tokens in groups of at most 13 per line."""
    return [tokens[i:i + per_line] for i in range(0, len(tokens), per_line)]


class SharedCache:
    """The lines (and the caller's bytes) of SHARED events, per event and
    variant: a turn's room events reach each IRC member in turn, often
    several at once (a join storm), and each is rendered once per variant.
    Bounded: past LIMIT events it starts again."""

    LIMIT = 4096

    def __init__(self):
        self._entries = {}  # id(event) -> (event, {variant: lines, ...})

    def of(self, event) -> Dict:
        entry = self._entries.get(id(event))
        if entry is None or entry[0] is not event:
            if len(self._entries) >= self.LIMIT:
                self._entries.clear()
            entry = self._entries[id(event)] = (event, {})
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()


def render_event(renderer: Renderer, cache: SharedCache, event, ctx: Context) -> List[str]:
    """Lines of ``event`` for ``ctx``; shared ones once per (event, variant)
    through ``cache``."""
    if event.type in SHARED:
        variant = ctx.variant
        per_event = cache.of(event)
        lines = per_event.get(variant)
        if lines is None:
            lines = per_event[variant] = renderer.shared(event, variant)
    else:
        lines = renderer.direct(event, ctx)
    track(event, ctx)
    return lines


def track(event, ctx: Context) -> None:
    """What the recipient has just been told that changes how a topic reads."""
    if event.type == "join" and event.fields["nick"] == ctx.nick:
        ctx.joined, ctx.after_names = event.fields["room"], None
    elif event.type == "names":
        ctx.joined = None
    else:
        ctx.joined = ctx.after_names = None


# -- the delivery layer's renderings -------------------------------------------

# The capabilities that change a shared line (Context.variant, in its order).
VARIANT_CAPS = ("server-time", "message-tags", "account-tag", "extended-join")
# SHARED events that also change what the recipient's face knows: its own
# JOIN (a topic right after it is numerics 332/333) and NICK (its own nick,
# which numerics name). In a room's share they are rendered per recipient
# (they are rare: a big room's joins come as ``presence``), by the face.
TRACKED = frozenset({"join", "nick"})
# The rest of SHARED: the same bytes for every recipient of a variant.
PLAIN = SHARED - TRACKED


def personal(event) -> bool:
    """Whether ``event`` is rendered per recipient in an IRC mode: anything
    not PLAIN, and replayed history (its batch is the connection's own)."""
    return event.type not in PLAIN or bool(event.fields.get("history"))


class Renderings:
    """One server's IRC renderings in the registry: a mode per tag variant
    (registered when first used), whose events of PLAIN types are rendered
    once for everybody; the others are personal and rendered by the
    recipient's face (``recipient.face.render_bytes(event)``)."""

    _serial = itertools.count(1)

    def __init__(self, renderer: Renderer):
        # The registry outlives a server (tests make many): it holds the
        # renderer weakly, so that a finished server's hub can go.
        self._renderer = weakref.ref(renderer)
        self.prefix = f"irc/{next(self._serial)}"
        self._modes = {}  # variant -> mode

    def mode(self, caps) -> str:
        """The mode of a connection with capabilities ``caps``."""
        variant = tuple(cap in caps for cap in VARIANT_CAPS)
        mode = self._modes.get(variant)
        if mode is None:
            mode = self.prefix + "".join("+" + cap for cap, on in zip(VARIANT_CAPS, variant)
                                         if on)
            register_rendering(mode, self._rendering(variant), personal)
            self._modes[variant] = mode
        return mode

    def _rendering(self, variant):
        ref = self._renderer

        def render(event, recipient=None) -> bytes:
            if recipient is not None:  # personal: the recipient's face says
                return recipient.face.render_bytes(event)
            renderer = ref()
            if renderer is None:
                return b""
            if event.type in SHARED:
                lines = renderer.shared(event, variant)
            else:
                lines = renderer.direct(event, Context())
            return "".join([line + "\r\n" for line in lines]).encode("utf-8")

        return render
