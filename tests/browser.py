"""A real headless Chromium for the web client's tests, through Playwright.

Debian's ``chromium`` is driven by Playwright's Python package
(``executable_path``: Playwright cannot download its own browsers here).
Playwright's sync API runs its own event loop, and refuses to run on a
thread where one is running already: every call to it goes to one worker
thread of its own (:meth:`Browser.run`), so tests behave the same under
pytest (with pytest-twisted) and trial.
"""

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


def unavailable():
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright (pip install playwright; it is in the test extra)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None


class Browser:
    """One Chromium with a fresh profile; ``run(fn, *args)`` calls ``fn`` on
    the Playwright thread and returns its result (or raises its exception).

    ``context`` is a persistent browser context on a fresh user-data-dir;
    ``page()`` opens a tab in it.
    """

    def __init__(self, viewport=(1100, 700)):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="playwright")
        self._dir = tempfile.mkdtemp(prefix="chat-chromium-")
        self._pw = self.context = None
        try:
            self.run(self._start, viewport)
        except BaseException:
            self.close()
            raise

    def _start(self, viewport):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            self._dir, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        self.context.set_default_timeout(TIMEOUT_MS)
        # The page's own JavaScript errors fail the test that caused them.
        self.errors = []

    def run(self, fn, *args, timeout=180):
        return self._pool.submit(fn, *args).result(timeout)

    def page(self, url=None):
        """A new tab (on the Playwright thread: call from inside ``run``)."""
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        if url is not None:
            page.goto(url)
        return page

    def close(self):
        def stop():
            try:
                if self.context is not None:
                    self.context.close()
            finally:
                if self._pw is not None:
                    self._pw.stop()

        try:
            self.run(stop, timeout=60)
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._dir, ignore_errors=True)
