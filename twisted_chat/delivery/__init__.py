"""Delivery: how the hub's events leave, whatever the face.

- :mod:`.turn`: the one per-turn scheduler every face's connections register
  with (the end-of-turn flush, the registry of connections, the global
  connection limits, input back-pressure, shutdown);
- :mod:`.outlet`: one connection's coalesced, bounded output, with the
  express path of room shares straight to idle sockets;
- :mod:`.render`: the renderings of events, a registry keyed by mode that
  each face adds its own to;
- :mod:`.directwrite`: the writes around Twisted's transport that the
  express path and the bounded output use.

Nothing here knows a wire format: a face registers its renderings, gives its
outlet a transport and a rendering mode, and reads and parses its own input.
"""
