"""IRCv3 ``draft/chathistory``: the ``CHATHISTORY`` command of the IRC face.

``CHATHISTORY LATEST|BEFORE|AFTER|AROUND <target> <ref> <limit>`` and
``CHATHISTORY BETWEEN <target> <ref> <ref> <limit>``, where a reference is
``msgid=ID`` (the core's message id), ``timestamp=YYYY-MM-DDThh:mm:ss.sssZ``
or, for LATEST, ``*``. The page is read by the hub
(:meth:`~twisted_chat.hub.Hub.history_range`, which checks that the asker is
in the room and never reads past what has gone out) and comes back as
replayed messages and a ``history-end`` carrying this command's label; the
connection turns them into one ``chathistory`` batch (an empty one when
there is nothing), see :meth:`.protocol.IRCProtocol._batched`.

Errors are the spec's standard replies: ``FAIL CHATHISTORY NEED_MORE_PARAMS``,
``INVALID_PARAMS`` (an unknown subcommand, a bad reference or limit),
``INVALID_TARGET`` (no such channel, not in it, or a nick: private history
is not served, since the store keeps nicks, not accounts, and a nick may
have had another owner), ``MESSAGE_ERROR`` (the store could not be read).
``TARGETS`` answers an empty ``draft/chathistory-targets`` batch.
"""

import calendar
import re
from datetime import datetime, timezone

from ...errors import ChatError
from ...history import HISTORY_CAP
from ...history.paging import Ref
from .message import build

CAP = "draft/chathistory"
MAX = HISTORY_CAP  # CHATHISTORY=<MAX> in RPL_ISUPPORT
ISUPPORT = [f"CHATHISTORY={MAX}", "MSGREFTYPES=msgid,timestamp"]
_SUBCOMMANDS = {"LATEST": 3, "BEFORE": 3, "AFTER": 3, "AROUND": 3, "BETWEEN": 4}
_TIMESTAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z$")


class BadReference(ValueError):
    pass


def parse_timestamp(text: str) -> int:
    """``2026-12-02T17:03:00.123Z`` -> milliseconds since the epoch."""
    m = _TIMESTAMP.match(text)
    if m is None:
        raise BadReference(text)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        when = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone.utc)
    except ValueError:
        raise BadReference(text) from None
    seconds = calendar.timegm(when.utctimetuple())
    fraction = (m.group(7) or "0").ljust(3, "0")[:3]
    return seconds * 1000 + int(fraction)


def parse_ref(text: str, star: bool = False):
    """A reference: Ref("id", N), Ref("ms", N), or None for ``*`` (when allowed)."""
    if text == "*" and star:
        return None
    kind, sep, value = text.partition("=")
    if not sep:
        raise BadReference(text)
    if kind == "msgid":
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise BadReference(text)
        return Ref("id", int(value))
    if kind == "timestamp":
        return Ref("ms", parse_timestamp(value))
    raise BadReference(text)


def command(face, params, msg=None):
    """``CHATHISTORY ...`` on the connection ``face`` (an IRCProtocol)."""
    server = face.factory.renderer.server

    def fail(code, *context):
        face._write_line(build("FAIL", ["CHATHISTORY", code, *context], server))

    if not params:
        return fail("NEED_MORE_PARAMS", "*", "Missing parameters")
    sub = params[0].upper()
    if sub == "TARGETS":
        return targets(face)
    need = _SUBCOMMANDS.get(sub)
    if need is None:
        return fail("INVALID_PARAMS", params[0], "Unknown subcommand")
    if len(params) < need + 1:
        return fail("NEED_MORE_PARAMS", sub, "Missing parameters")
    target = params[1]
    try:
        refs = [parse_ref(p, star=(sub == "LATEST")) for p in params[2:need]]
    except BadReference:
        return fail("INVALID_PARAMS", sub, "Invalid message reference")
    raw_limit = params[need]
    if not (raw_limit.isascii() and raw_limit.isdigit()) or len(raw_limit) > 9:
        return fail("INVALID_PARAMS", sub, "Invalid limit")
    limit = min(int(raw_limit), MAX) or MAX
    refs = [r for r in refs if r is not None]
    if not target.startswith("#"):
        return fail("INVALID_TARGET", sub, target, "Messages could not be retrieved")
    try:
        face.factory.hub.history_range(face.member, target[1:], sub.lower(), refs, limit,
                                       label=(sub, target))
    except ChatError:
        # No such channel, not in it, not a channel name: one answer for all,
        # so that asking reveals nothing of channels one is not in.
        fail("INVALID_TARGET", sub, target, "Messages could not be retrieved")


def targets(face):
    """``CHATHISTORY TARGETS``: private history is not served, and a client
    knows its channels; an empty list."""
    if "batch" not in face.caps:
        return
    face._batches += 1
    ref = f"h{face._batches}"
    server = face.factory.renderer.server
    face._write_line(build("BATCH", ["+" + ref, "draft/chathistory-targets"], server))
    face._write_line(build("BATCH", ["-" + ref], server))


def ended(face, event):
    """The lines that end a labelled page for ``face``: its batch's end (or
    an empty batch), or a FAIL when the store could not be read."""
    server = face.factory.renderer.server
    sub, target = event.fields["label"]
    if event.type == "error":
        return [build("FAIL", ["CHATHISTORY", "MESSAGE_ERROR", sub, target,
                               "Messages could not be retrieved"], server)]
    if "batch" not in face.caps:
        return []
    if face._batch is not None:
        end = build("BATCH", ["-" + face._batch[0]], server)
        face._batch = None
        return [end]
    face._batches += 1
    ref = f"h{face._batches}"
    return [build("BATCH", ["+" + ref, "chathistory", target], server),
            build("BATCH", ["-" + ref], server)]
