"""The web face: the browser client's page and its WebSocket (``twistd chat --web``).

:mod:`.site` serves the page (``static/``) and ``/ws``; :mod:`.session` makes
each WebSocket a line-protocol session in JSON mode; :mod:`.frames` renders
the line face's events as WebSocket frames (``ws-json``, ``ws-text``), once
per event for every receiver.
"""
