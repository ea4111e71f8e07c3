"""Log output for a journal or a log shipper: one JSON object a line.

``twistd --logger twisted_chat.logs.json -n chat ...`` logs through
twisted.logger's JSON observer (:func:`twisted.logger.jsonFileLogObserver`)
to standard output, one event per line (newline-delimited JSON, no record
separator), each with the event's fields as Twisted writes them
(``log_time``, ``log_level``, ``log_namespace``, ``log_format`` and the
format's fields, ``log_failure`` for errors) plus ``log_text``, the message
as the text log would show it (with the traceback of an error), so that a
reader needs no Twisted to read it.
``twisted.logger.eventsFromJSONLogFile`` reads such a file back.
"""

import sys

from twisted.logger import ILogObserver, eventAsText, jsonFileLogObserver
from zope.interface import implementer


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event to ``out`` as one line of JSON, with ``log_text``."""

    def __init__(self, out):
        self._write = jsonFileLogObserver(out, recordSeparator="")

    def __call__(self, event):
        text = eventAsText(event, includeTraceback=True, includeTimestamp=False,
                           includeSystem=False)
        self._write(dict(event, log_text=text))


def json(out=None) -> JSONLinesObserver:
    """The ``--logger`` factory: JSON lines to ``out`` (standard output)."""
    return JSONLinesObserver(sys.stdout if out is None else out)
