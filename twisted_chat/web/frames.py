"""WebSocket framing of the line face's output (RFC 6455, section 5.2), and
the web face's two renderings in the delivery layer's registry.

The line face writes CRLF-terminated lines (one JSON event each); over a
WebSocket each line leaves as one unmasked, unfragmented, uncompressed text
frame. A server's frames are the same bytes for every receiver, so they are
renderings of their own (:mod:`twisted_chat.delivery.render`): ``ws-json``
and ``ws-text`` are the line face's ``json`` and ``text`` with each line as a
frame. An event is framed once, whoever receives it, and a room's share of a
turn is one ``bytes`` object of frames for all its WebSocket members, which
the fan-out's express sends hand to their sockets in bulk: the bytes
Autobahn's ``prepareMessage`` would build, without its per-receiver
``sendPreparedMessage`` (docs/performance.rst, "The WebSocket face").
:class:`FrameCache` frames a blob of lines once per object (the benchmark
``twisted_chat.bench.wsframing`` measures it).
"""

from ..delivery.render import register_rendering
from ..events import JSON, TEXT

WS_JSON = "ws-json"
WS_TEXT = "ws-text"
# The line face's mode of each web mode, and back.
LINE_MODE = {WS_JSON: JSON, WS_TEXT: TEXT}
WEB_MODE = {JSON: WS_JSON, TEXT: WS_TEXT}

_CRLF = b"\r\n"


def frame(payload: bytes) -> bytes:
    """One final text frame carrying ``payload`` (UTF-8 bytes)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 0x10000:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def frame_lines(data: bytes) -> bytes:
    """Each CRLF-terminated line of ``data`` as a frame (without its CRLF).

    JSON never holds a raw CR or LF (``json.dumps`` escapes them), so the
    split is exact; a text-mode event of several lines gives several frames.
    """
    lines = data.split(_CRLF)
    if lines[-1]:  # a tail without its terminator: still a line
        return b"".join([frame(line) for line in lines])
    del lines[-1]
    if len(lines) == 1:
        return frame(lines[0])
    return b"".join([frame(line) for line in lines])


class FrameCache:
    """``frame_lines`` remembering its last answer by the identity of its
    argument: the members of a room get one ``bytes`` object per turn, so
    the second and later WebSocket members of the room reuse the frames.

    The cache holds a reference to that object, so its identity cannot be
    reused by another while it is cached.
    """

    __slots__ = ("_data", "_frames")

    def __init__(self):
        self._data = None
        self._frames = b""

    def __call__(self, data: bytes) -> bytes:
        if data is self._data:
            return self._frames
        framed = frame_lines(data)
        self._data, self._frames = data, framed
        return framed


def _ws_json(event, recipient=None) -> bytes:
    """The event's JSON line (cached on it for the line face too) as a frame;
    nothing for an event the line face does not show (not an empty frame)."""
    line = event.encode(JSON)
    return frame(line[:-2]) if line else b""


def _ws_text(event, recipient=None) -> bytes:
    """The event's text lines, a frame each."""
    return frame_lines(event.encode(TEXT))


register_rendering(WS_JSON, _ws_json)
register_rendering(WS_TEXT, _ws_text)
