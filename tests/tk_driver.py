"""Runs the real desktop client (window, reactor, tksupport) and lets a test drive it.

Usage: ``python tests/tk_driver.py [twisted-chat-client options]`` under a
display. The client is built exactly as ``twisted-chat-client`` builds it
(:func:`twisted_chat.client.app.build`) and run with the real reactor. Each
line on stdin is a JSON command ``{"op": ..., "seq": N, ...}``; each reply is
one JSON line on stdout carrying the same ``seq``:

- ``dump``: the widgets' contents (chat log lines and their style tags,
  member list, room label, topic bar, list of conversations and which is
  selected, status bar, title, entry, nick field)
- ``geometry``: where things are on the screen, for xdotool: the window's
  X id and the centre of each entry of the conversation list
- ``type`` ``text``: replace the entry's text
- ``send``: invoke the Send button
- ``key`` ``widget`` (entry | nick) ``key`` (e.g. ``Return``, ``Up``): a key
  event to that widget's bindings
- ``nick`` ``text``: replace the nick field's text
- ``password`` ``text``: type into the login bar's password field and click Log in
- ``focus_entry``: give the entry the X focus (before xdotool types keys)
- ``focus`` ``focused`` (bool): tell the model the window gained or lost the focus
- ``scroll`` ``fraction``: scroll the chat log (0.0 is the top)
- ``close``: the window manager's close button (WM_DELETE_WINDOW)
- ``screenshot`` ``path``: a PNG of the window (ImageMagick's ``import``)

When stdin closes the driver closes the window, as the close button would.
"""

import json
import os
import signal
import subprocess
import sys

from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_chat.client import app as client_app  # noqa: E402


def widget_state(app):
    view, root = app.view, app.root
    log = view.log
    text = log.get("1.0", "end-1c")
    lines = text.split("\n") if text else []
    tags = []
    for i in range(1, len(lines) + 1):
        names = {value for key, value, _ in log.dump(f"{i}.0", f"{i}.end", tag=True)
                 if key == "tagon"}
        names.update(log.tag_names(f"{i}.0"))
        tags.append(sorted(names))
    return {
        "lines": lines,
        "tags": tags,
        "members": list(view.members_list.get(0, "end")),
        "conversations": list(view.rooms_list.get(0, "end")),
        "selected": [view.rooms_list.get(i) for i in view.rooms_list.curselection()],
        "topic": view.topic_label.cget("text"),
        "members_label": view.members_label.cget("text"),
        "room": view.room_label.cget("text"),
        "status": view.status_label.cget("text"),
        "title": root.title(),
        "entry": view.entry.get(),
        "nick_field": view.nick_var.get(),
        "at_bottom": log.yview()[1] >= 0.999,
        "focused": app.model.focused,
        "login_bar": view.login_label.cget("text") if view.login_bar.winfo_manager() else None,
        "password_field": view.password_entry.get(),
    }


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, app):
        self.app = app

    def lineReceived(self, line):
        cmd = json.loads(line)
        reply = {"seq": cmd.get("seq"), "op": cmd.get("op")}
        try:
            reply.update(self.do(cmd) or {})
        except Exception as e:  # reported to the test, which fails with it
            reply["error"] = repr(e)
        self.sendLine(json.dumps(reply).encode("utf-8"))

    def do(self, cmd):
        op, view, root = cmd["op"], self.app.view, self.app.root
        if op == "dump":
            return widget_state(self.app)
        if op == "geometry":
            root.update_idletasks()
            lb = view.rooms_list
            points = []
            for i in range(lb.size()):
                lb.see(i)
                x, y, w, h = lb.bbox(i)
                points.append([lb.winfo_rootx() + x + w // 2, lb.winfo_rooty() + y + h // 2])
            return {"window": root.winfo_id(), "frame": int(root.wm_frame(), 16),
                    "rooms": points}
        if op == "type":
            view.entry.delete(0, "end")
            view.entry.insert(0, cmd["text"])
        elif op == "send":
            view.send_button.invoke()
        elif op == "nick":
            view.nick_entry.delete(0, "end")
            view.nick_entry.insert(0, cmd["text"])
        elif op == "password":
            view.password_entry.delete(0, "end")
            view.password_entry.insert(0, cmd["text"])
            view.login_button.invoke()
        elif op == "key":
            widget = {"entry": view.entry, "nick": view.nick_entry}[cmd["widget"]]
            widget.focus_force()
            widget.event_generate(f"<KeyPress-{cmd['key']}>", when="now")
        elif op == "focus_entry":
            view.entry.focus_force()
            root.update()
        elif op == "focus":
            view.model.set_focus(cmd["focused"])
            return {"title": root.title()}
        elif op == "scroll":
            view.log.yview_moveto(cmd["fraction"])
            root.update_idletasks()
            return {"at_bottom": view.log.yview()[1] >= 0.999}
        elif op == "close":
            root.tk.call(root.protocol("WM_DELETE_WINDOW"))
        elif op == "screenshot":
            root.update_idletasks()
            window = root.wm_frame()
            subprocess.run(["import", "-window", window, cmd["path"]], check=True)
        else:
            raise ValueError(f"unknown op {op!r}")

    def connectionLost(self, reason):
        self.app.quit()


def main():
    # As if started from a terminal, where Ctrl+C reaches the client: a test
    # run started in the background by a non-interactive shell hands its
    # children SIGINT ignored, and Twisted leaves an ignored SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app = client_app.build(sys.argv[1:])
    stdio.StandardIO(Control(app))
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
