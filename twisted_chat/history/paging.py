"""Paging a room's history around a reference, in the store's words: the
reads behind a face's history paging (the IRC face's ``CHATHISTORY``).

A reference (:class:`Ref`) is a message id or a time in whole milliseconds
since the epoch (what a rendered ``ts``/``time`` shows: truncated). A page
is one of:

* ``latest``: the newest messages, after the reference if one is given;
* ``before`` / ``after``: the messages just before / just after it;
* ``around``: about half before it, the rest from it on (it included);
* ``between``: the messages strictly between two references, counted from
  the first (so backwards in time when the first is the later one).

Every read is bounded by ``upto``, the id of the last message that has gone
out when the page was asked for (the hub's rule for every replay): a
message stored but not yet delivered never shows in a page before it
arrives live. Pages are always oldest first. Nothing here checks who may
read a room: the hub does, before it asks.
"""

from typing import NamedTuple, Optional

from twisted.internet.defer import succeed

HOWS = ("latest", "before", "after", "around", "between")


class Ref(NamedTuple):
    """Where a page starts or ends: ``kind`` ``"id"`` or ``"ms"``."""

    kind: str
    value: int


def _bounds(after: Optional[Ref] = None, before: Optional[Ref] = None, upto: int = 0) -> dict:
    """The store's exclusive bounds for (after, before), capped at ``upto``."""
    cap = upto + 1
    bounds = {"before_id": cap}
    if after is not None:
        bounds["after_" + after.kind] = after.value
    if before is not None:
        if before.kind == "id":
            bounds["before_id"] = min(before.value, cap)
        else:
            bounds["before_ms"] = before.value
    return bounds


def _ordered(a: Ref, b: Ref, store, room: str):
    """A Deferred of whether ``a`` comes before ``b`` in the room's history.
    An id and a time are compared by the time of the message with that id
    (in the room; an id that is not one of its messages counts as before)."""
    if a.kind == b.kind:
        return succeed(a.value <= b.value)
    ref, ms = (a, b) if a.kind == "id" else (b, a)
    d = store.page(room, 1, after_id=ref.value - 1, before_id=ref.value + 1)

    def compare(rows):
        ref_ms = int(rows[0].t * 1000) if rows else None
        if ref_ms is None:
            return True
        earlier = ref_ms <= ms.value
        return earlier if ref is a else not earlier

    return d.addCallback(compare)


def read(store, room: str, how: str, refs, limit: int, upto: int):
    """A Deferred of the page (a list of StoredMessage, oldest first).

    ``refs``: no reference or one for ``latest`` (None: the newest), one for
    ``before``, ``after`` and ``around``, two for ``between``."""
    if limit <= 0:
        return succeed([])
    if how == "latest":
        ref = refs[0] if refs else None
        return store.page(room, limit, **_bounds(after=ref, upto=upto))
    if how == "before":
        return store.page(room, limit, **_bounds(before=refs[0], upto=upto))
    if how == "after":
        return store.page(room, limit, newest=False, **_bounds(after=refs[0], upto=upto))
    if how == "around":
        ref = refs[0]
        # The reference itself belongs to the later half: one below it, exclusive.
        from_it = Ref(ref.kind, ref.value - 1)
        d = store.page(room, limit // 2, **_bounds(before=ref, upto=upto))

        def later(earlier):
            d2 = store.page(room, limit - len(earlier), newest=False,
                            **_bounds(after=from_it, upto=upto))
            return d2.addCallback(lambda rows: earlier + rows)

        return d.addCallback(later)
    if how == "between":
        a, b = refs

        def page(forwards):
            if forwards:
                return store.page(room, limit, newest=False,
                                  **_bounds(after=a, before=b, upto=upto))
            return store.page(room, limit, **_bounds(after=b, before=a, upto=upto))

        return _ordered(a, b, store, room).addCallback(page)
    raise ValueError(f"no page {how!r}")

