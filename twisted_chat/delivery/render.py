"""Renderings of events, keyed by mode: how an Event becomes bytes on a wire.

Each face registers the renderings it speaks (the line face: ``text`` and
``json``; an IRC face: ``irc``; a WebSocket face: its frames) with
:func:`register_rendering`, without touching the hub. An outlet's *mode* names
one of them. A rendering includes its framing (a CRLF, a WebSocket frame
header), so the bytes it returns are exactly what goes on the wire.

An event is rendered at most once per rendering, whoever receives it: the
bytes are cached on the event (:meth:`~twisted_chat.events.Event.encode`).
A rendering may say that some events come out differently for each
recipient (an IRC numeric names its recipient): those are rendered per
recipient, never cached, never sent as a room's common share, and never on
the express path (which sends one object of bytes to many sockets).
"""

from typing import Callable, Dict, Optional


class Rendering:
    """One registered rendering: ``render(event, recipient) -> bytes``, and
    ``personal(event) -> bool`` (None: every event is the same for everybody)."""

    __slots__ = ("mode", "render", "personal")

    def __init__(self, mode: str, render: Callable, personal: Optional[Callable]):
        self.mode = mode
        self.render = render
        self.personal = personal

    @property
    def shared(self) -> bool:
        """Whether every event's bytes are the same for every recipient."""
        return self.personal is None

    def __repr__(self) -> str:
        return f"<Rendering {self.mode}{'' if self.shared else ' (personal)'}>"


_RENDERINGS: Dict[str, Rendering] = {}


def register_rendering(mode: str, render: Callable, personal: Optional[Callable] = None):
    """Make ``mode`` a rendering outlets can speak.

    ``render(event, recipient)`` returns the event's bytes, framing included;
    ``recipient`` is the :class:`~twisted_chat.delivery.outlet.Outlet` the
    bytes are for when the event is personal (its ``member``, its ``face``
    with whatever per-connection state the rendering needs), else None. ``personal(event)``, if given, says which events
    are personal in this rendering. A mode registers once (again with the
    same functions is a no-op: a module imported twice); a different
    rendering under a taken name is a ``ValueError``.
    """
    known = _RENDERINGS.get(mode)
    if known is not None:
        if known.render is render and known.personal is personal:
            return known
        raise ValueError(f"a rendering {mode!r} is registered already")
    rendering = _RENDERINGS[mode] = Rendering(mode, render, personal)
    return rendering


def rendering(mode: str) -> Rendering:
    """The rendering registered as ``mode`` (``ValueError`` if none is)."""
    try:
        return _RENDERINGS[mode]
    except KeyError:
        raise ValueError(f"no rendering {mode!r} is registered") from None


def is_personal(event, mode: str) -> bool:
    """Whether ``event`` comes out differently for each recipient in ``mode``."""
    personal = rendering(mode).personal
    return personal is not None and bool(personal(event))


def render(event, mode: str, recipient=None) -> bytes:
    """``event`` in ``mode``: cached on the event unless it is personal there.

    The slow path of :meth:`Event.encode <twisted_chat.events.Event.encode>`,
    which returns cached bytes itself.
    """
    r = rendering(mode)
    if r.personal is not None and r.personal(event):
        return r.render(event, recipient)
    data = r.render(event, None)
    cache = event._enc
    if cache is None:
        event._enc = {mode: data}
    else:
        cache[mode] = data
    return data
