"""The web face's HTTP side: the page at ``/``, its WebSocket at ``/ws``,
and the security headers on every answer.

The page's files (``static/``) ship in the package and are read once at
start; there is no build step and nothing is fetched from elsewhere (the
page works on a LAN without internet).
"""

from importlib import resources

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource, server, static

from .session import WebSocketFactory

# Every answer. The page runs only its own script and style files (no
# inline script or style), talks only to its own server, and may not be
# framed by another site.
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
}

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
HTTP_TIMEOUT = 60  # seconds an idle HTTP (not WebSocket) connection is kept


class _File(static.Data):
    """One packaged file, revalidated by the browser on every load (an
    upgraded server's page is used at once)."""

    def render_GET(self, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render_GET(request)


class _Socket(WebSocketResource):
    """Autobahn's resource, which takes the HTTP connection over. The HTTP
    channel lets go of it first: its idle timeout must not fire on the
    WebSocket it became, and the session's bounded output registers itself
    as the transport's producer in the channel's place."""

    def render(self, request):
        channel = request.channel
        channel.setTimeout(None)
        producer = getattr(channel, "_networkProducer", None)
        if producer is not None and channel.transport is not None:
            producer.unregisterProducer()
        return super().render(request)


class WebSite(server.Site):
    """A twisted.web Site adding SECURITY_HEADERS to every answer."""

    def getResourceFor(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return super().getResourceFor(request)


def page_files():
    """{name: bytes} of the page's files, from the installed package."""
    folder = resources.files(__package__) / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def make_site(chat, origins=()):
    """The Site for ``--web`` listeners, serving sessions of ``chat`` (the
    line face's ChatFactory)."""
    root = resource.Resource()
    for name, data in page_files().items():
        root.putChild(name.encode(), _File(data, STATIC_FILES[name]))
    root.putChild(b"", root.children[b"index.html"])
    root.putChild(b"ws", _Socket(WebSocketFactory(chat, origins)))
    site = WebSite(root, timeout=HTTP_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    return site
