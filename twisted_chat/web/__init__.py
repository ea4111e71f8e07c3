"""The web face: the browser client's page and its WebSocket (``twistd chat --web``).

:mod:`.site` serves the page (``static/``) and ``/ws``; :mod:`.session` makes
each WebSocket a line-protocol session in JSON mode; :mod:`.frames` turns the
line face's output into WebSocket frames, once per shared blob.
"""
