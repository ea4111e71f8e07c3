"""WebSocket framing of the line face's output (RFC 6455, section 5.2).

The line face writes CRLF-terminated lines (one JSON event each); over a
WebSocket each line leaves as one unmasked, unfragmented, uncompressed text
frame. A server's frames are the same bytes for every receiver, so a room's
share of a turn, which the fan-out hands as the *same* ``bytes`` object to
every member, is framed once for all of them (:class:`FrameCache`): the bytes
Autobahn's ``prepareMessage`` would build, without its per-receiver
``sendPreparedMessage`` (docs/performance.rst, "The WebSocket face").
"""

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
