"""The chat window: renders a ConversationModel with Tk and forwards the user's input.

On the left the list of conversations (joined rooms, then private peers)
with unread counts and a mention mark; click one, or Ctrl+PgUp / Ctrl+PgDn,
to show it. In the middle the shown conversation's topic bar and log; on the
right its members, operators marked ``@`` and voiced members ``+``.

The view never touches sockets: what the user types goes to a ``submit``
callable (the session's), and everything shown comes from the model's change
notifications. No modal dialogs: a nested Tk loop would starve the reactor,
so whatever the client must ask (another nick, say) is asked in the window.
"""

import tkinter as tk
import tkinter.font as tkfont
import zlib
from typing import Callable, Optional

from . import model as m

# Nick colours of other people: readable on white, told apart at a glance.
_NICK_COLOURS = ("#b5400d", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#827717",
                 "#4e342e", "#283593", "#c62828", "#00695c")
OWN_COLOUR = "#1a57b0"
UNREAD_COLOUR = "#1a57b0"  # a conversation with unread messages
MENTION_COLOUR = "#c62828"  # ... one of which names the user


def nick_colour(nick: str) -> str:
    return _NICK_COLOURS[zlib.crc32(nick.casefold().encode("utf-8")) % len(_NICK_COLOURS)]


def _tk_safe(text: str) -> str:
    # Tcl 8.6 keeps strings in UCS-2 on some builds: astral characters (emoji)
    # would raise TclError; show a replacement character rather than crash.
    if tk.TkVersion >= 9.0:
        return text
    return "".join(c if ord(c) < 0x10000 else "\ufffd" for c in text)


class ChatView:
    """The window's widgets on ``root``, kept in step with ``model``."""

    def __init__(self, root: tk.Tk, model: m.ConversationModel, submit: Callable[[str], None],
                 login: Optional[Callable[[str], None]] = None):
        self.root = root
        self.model = model
        self.submit = submit
        self.login = login  # takes the password typed into the login bar
        self.history = m.InputHistory()
        self._nick_tags = set()
        self._build()
        self._render_log()
        self._render_conversations()
        self._render_members()
        self._render_topic()
        self._render_room()
        self._render_nick()
        self._render_status()
        self._render_login()
        model.subscribe(self._changed)
        root.bind("<FocusIn>", self._focus_in, add="+")
        root.bind("<FocusOut>", self._focus_out, add="+")
        # Anywhere in the window (the entry included): the previous / next conversation.
        root.bind_all("<Control-Prior>", lambda event: self._switch(-1))
        root.bind_all("<Control-Next>", lambda event: self._switch(1))
        self._ticking = root.after(1000, self._tick)
        self.entry.focus_set()
        if self.login_bar.winfo_manager():
            self.password_entry.focus_set()

    # -- layout --------------------------------------------------------------

    def _build(self):
        root = self.root
        root.minsize(520, 320)
        base = tkfont.nametofont("TkDefaultFont").actual()
        size = max(abs(base["size"]), 10)
        family = base["family"]
        self.fonts = {
            "text": tkfont.Font(root, family=family, size=size),
            "bold": tkfont.Font(root, family=family, size=size, weight="bold"),
            "italic": tkfont.Font(root, family=family, size=size, slant="italic"),
            "small": tkfont.Font(root, family=family, size=max(size - 1, 8)),
            "room": tkfont.Font(root, family=family, size=size + 3, weight="bold"),
        }
        root.columnconfigure(0, weight=1)
        root.rowconfigure(1, weight=1)

        top = tk.Frame(root, padx=8, pady=4)
        top.grid(row=0, column=0, sticky="ew")
        top.columnconfigure(0, weight=1)
        self.room_label = tk.Label(top, text="", font=self.fonts["room"], anchor="w")
        self.room_label.grid(row=0, column=0, sticky="w")
        tk.Label(top, text="Nick:").grid(row=0, column=1, sticky="e")
        self.nick_var = tk.StringVar(root)
        self.nick_entry = tk.Entry(top, textvariable=self.nick_var, width=16)
        self.nick_entry.grid(row=0, column=2, sticky="e", padx=(4, 0))
        self.nick_entry.bind("<Return>", self._change_nick)
        self.nick_entry.bind("<KP_Enter>", self._change_nick)

        # The login bar: in the window, not a dialog (a nested Tk loop would
        # starve the reactor). Shown while the account's password is wanted.
        self.login_bar = tk.Frame(top)
        self.login_label = tk.Label(self.login_bar, text="")
        self.login_label.grid(row=0, column=0, sticky="w")
        self.password_entry = tk.Entry(self.login_bar, show="\u2022", width=24)
        self.password_entry.grid(row=0, column=1, padx=(4, 4))
        self.login_button = tk.Button(self.login_bar, text="Log in", command=self.submit_password)
        self.login_button.grid(row=0, column=2)
        for key in ("<Return>", "<KP_Enter>"):
            self.password_entry.bind(key, lambda event: self.submit_password() or "break")

        body = tk.PanedWindow(root, orient="horizontal", sashwidth=5, borderwidth=0)
        body.grid(row=1, column=0, sticky="nsew", padx=6)

        rooms = tk.Frame(body)
        rooms.rowconfigure(1, weight=1)
        rooms.columnconfigure(0, weight=1)
        tk.Label(rooms, text="Rooms", anchor="w", font=self.fonts["bold"]).grid(
            row=0, column=0, sticky="ew", padx=(0, 4))
        self.rooms_list = tk.Listbox(rooms, width=16, activestyle="none",
                                     font=self.fonts["text"], borderwidth=1, relief="sunken",
                                     exportselection=False, selectbackground="#dbe7fb",
                                     selectforeground="#1b1b1b")
        self.rooms_list.grid(row=1, column=0, sticky="nsew", padx=(0, 4))
        self.rooms_list.bind("<<ListboxSelect>>", self._list_selected)
        body.add(rooms, stretch="never", minsize=100)
        self._listed_keys = []

        logframe = tk.Frame(body)
        logframe.rowconfigure(1, weight=1)
        logframe.columnconfigure(0, weight=1)
        self.topic_label = tk.Label(logframe, text="", anchor="w", justify="left",
                                    font=self.fonts["italic"], background="#f4f4f0",
                                    foreground="#3b3b3b", relief="groove", borderwidth=1,
                                    padx=6, pady=2)
        self.topic_label.grid(row=0, column=0, columnspan=2, sticky="ew", pady=(0, 3))
        self.topic_label.bind(
            "<Configure>", lambda e: self.topic_label.configure(wraplength=max(e.width - 14, 50)))
        self.log = tk.Text(logframe, wrap="word", state="disabled", width=70, height=22,
                           font=self.fonts["text"], padx=6, pady=4, borderwidth=1,
                           relief="sunken", background="white", foreground="#1b1b1b",
                           spacing1=1, spacing3=1, cursor="arrow")
        scroll = tk.Scrollbar(logframe, orient="vertical", command=self.log.yview)
        self.log.configure(yscrollcommand=scroll.set)
        self.log.grid(row=1, column=0, sticky="nsew")
        scroll.grid(row=1, column=1, sticky="ns")
        body.add(logframe, stretch="always", minsize=300)

        side = tk.Frame(body)
        side.rowconfigure(1, weight=1)
        side.columnconfigure(0, weight=1)
        self.members_label = tk.Label(side, text="Members", anchor="w", font=self.fonts["bold"])
        self.members_label.grid(row=0, column=0, sticky="ew", padx=(4, 0))
        self.members_list = tk.Listbox(side, width=18, activestyle="none",
                                       font=self.fonts["text"], borderwidth=1, relief="sunken",
                                       exportselection=False)
        self.members_list.grid(row=1, column=0, sticky="nsew", padx=(4, 0))
        body.add(side, stretch="never", minsize=120)

        bottom = tk.Frame(root, padx=6, pady=6)
        bottom.grid(row=2, column=0, sticky="ew")
        bottom.columnconfigure(0, weight=1)
        self.entry = tk.Entry(bottom, font=self.fonts["text"])
        self.entry.grid(row=0, column=0, sticky="ew", ipady=3)
        self.send_button = tk.Button(bottom, text="Send", width=8, command=self.send)
        self.send_button.grid(row=0, column=1, padx=(6, 0))
        for key in ("<Return>", "<KP_Enter>"):
            self.entry.bind(key, self._enter)
        self.entry.bind("<Up>", self._up)
        self.entry.bind("<Down>", self._down)

        self.status_label = tk.Label(root, text="", anchor="w", relief="sunken",
                                     borderwidth=1, padx=6, font=self.fonts["small"])
        self.status_label.grid(row=3, column=0, sticky="ew")

        log, f = self.log, self.fonts
        log.tag_configure("stamp", foreground="#8a8a8a", font=f["small"])
        log.tag_configure(m.OWN + "-who", foreground=OWN_COLOUR, font=f["bold"])
        log.tag_configure(m.OWN, background="#f1f6ff")
        log.tag_configure(m.OTHER + "-who", font=f["bold"])
        log.tag_configure(m.ACTION, foreground="#7b1fa2", font=f["italic"])
        log.tag_configure(m.PRIVATE, foreground="#8e0038", background="#fff0f5")
        log.tag_configure(m.PRIVATE + "-who", foreground="#8e0038", font=f["bold"])
        log.tag_configure(m.SYSTEM, foreground="#6b6b6b", font=f["small"])
        log.tag_configure(m.ERROR, foreground="#c62828", font=f["bold"])
        log.tag_configure(m.UNSENT, foreground="#b26a00", font=f["italic"])
        log.tag_configure("history", foreground="#9a9a9a")
        log.tag_configure(m.SEPARATOR, foreground="#1565c0", font=f["small"],
                          justify="center")
        # Wrapped lines hang under the text, clear of the timestamp.
        log.tag_configure("body", lmargin2=f["small"].measure("[00:00] ") + 4)
        log.tag_lower("body")

    # -- model changes -------------------------------------------------------

    def _changed(self, change, value):
        if change == m.LINE_ADDED:
            self._add_line(value)
        elif change == m.MEMBERS_CHANGED:
            self._render_members()
        elif change == m.ROOM_CHANGED:
            self._render_room()
            self._render_log()
            self._render_conversations()
        elif change == m.CONVERSATIONS_CHANGED:
            self._render_conversations()
        elif change == m.TOPIC_CHANGED:
            self._render_topic()
        elif change == m.NICK_CHANGED:
            self._render_nick()
        elif change == m.STATUS_CHANGED:
            self._render_status()
        elif change == m.LOGIN_CHANGED:
            self._render_login()
        self.root.title(self.model.title())

    def _render_log(self):
        # The shown conversation's lines, from the top, following the end.
        log = self.log
        log.configure(state="normal")
        log.delete("1.0", "end")
        log.configure(state="disabled")
        for line in self.model.lines:
            self._add_line(line)
        log.see("end")

    def _at_bottom(self) -> bool:
        return self.log.yview()[1] >= 0.999

    def _add_line(self, line: m.Line):
        follow = self._at_bottom()
        log = self.log
        log.configure(state="normal")
        extra = ("body", "history") if line.history else ("body",)
        if log.index("end-1c") != "1.0":
            log.insert("end", "\n")
        log.insert("end", f"[{line.stamp}] ", ("stamp",) + extra)
        if line.who:
            who_tags = (line.kind + "-who", line.kind)
            if line.kind == m.OTHER:
                who_tags += (self._nick_tag(line.who.strip("<>")),)
            log.insert("end", _tk_safe(line.who) + " ", who_tags + extra)
        log.insert("end", _tk_safe(line.text), (line.kind,) + extra)
        # Keep the widget bounded like the model.
        excess = int(log.index("end-1c").split(".")[0]) - self.model.max_lines
        if excess > 0:
            log.delete("1.0", f"{excess + 1}.0")
        log.configure(state="disabled")
        if follow:
            log.see("end")

    def _nick_tag(self, nick: str) -> str:
        tag = "nick-" + nick_colour(nick)
        if tag not in self._nick_tags:
            self.log.tag_configure(tag, foreground=nick_colour(nick))
            self.log.tag_raise("history")
            self._nick_tags.add(tag)
        return tag

    def _render_members(self):
        lb = self.members_list
        lb.delete(0, "end")
        marked = self.model.marked_members()
        for i, entry in enumerate(marked):
            lb.insert("end", _tk_safe(entry))
            nick = entry.lstrip("@+")
            lb.itemconfigure(i, foreground=OWN_COLOUR if self.model.is_me(nick)
                             else nick_colour(nick))
        n = len(marked)
        self.members_label.configure(text=f"{n} member{'s' if n != 1 else ''}" if n else "Members")

    def _render_conversations(self):
        lb = self.rooms_list
        entries = self.model.listing()
        self._listed_keys = [c.key for c in entries]
        lb.delete(0, "end")
        for i, conv in enumerate(entries):
            lb.insert("end", _tk_safe(conv.label()))
            if conv.mention:
                lb.itemconfigure(i, foreground=MENTION_COLOUR)
            elif conv.unread:
                lb.itemconfigure(i, foreground=UNREAD_COLOUR)
            elif conv.is_room and not conv.joined:
                lb.itemconfigure(i, foreground="#9a9a9a")
        if self.model.shown in self._listed_keys:
            index = self._listed_keys.index(self.model.shown)
            lb.selection_set(index)
            lb.see(index)

    def _list_selected(self, event):
        chosen = self.rooms_list.curselection()
        if chosen and chosen[0] < len(self._listed_keys):
            self.model.select(self._listed_keys[chosen[0]])
        self.entry.focus_set()

    def _switch(self, step):
        self.model.select_relative(step)
        return "break"

    def _render_topic(self):
        self.topic_label.configure(text=_tk_safe(self.model.topic_text() or " "))

    def _render_room(self):
        conv = self.model.current
        if conv is None:
            text = "(no room)"
        else:
            text = f"#{conv.name}" if conv.is_room else f"*{conv.name}* (private)"
        self.room_label.configure(text=_tk_safe(text))

    def _render_nick(self):
        try:
            editing = self.root.focus_get() is self.nick_entry
        except (KeyError, tk.TclError):
            editing = False
        if not editing:
            self.nick_var.set(self.model.nick or "")

    def _render_status(self):
        self.status_label.configure(text=self.model.status_text())

    def _render_login(self):
        state = self.model.login_state
        if self.model.login_name and state in (m.LOGIN_NEEDED, m.LOGIN_FAILED):
            again = " (again)" if state == m.LOGIN_FAILED else ""
            self.login_label.configure(text=f"Password for {self.model.login_name}{again}:")
            self.login_bar.grid(row=1, column=0, columnspan=3, sticky="w", pady=(4, 0))
            self.password_entry.focus_set()
        else:
            self.login_bar.grid_remove()

    def submit_password(self):
        """The login bar's Log in button (and Enter in its field)."""
        password = self.password_entry.get()
        self.password_entry.delete(0, "end")
        if password and self.login is not None:
            self.login(password)
        self.entry.focus_set()

    def _tick(self):
        # The "reconnecting in N s" countdown.
        self._render_status()
        self._ticking = self.root.after(1000, self._tick)

    # -- user input ----------------------------------------------------------

    def send(self):
        """Send what the entry holds (Enter and the Send button)."""
        text = self.entry.get()
        self.entry.delete(0, "end")
        if not text.strip():
            return
        if not text.lower().startswith("/login"):
            self.history.add(text)  # a password stays out of the recall list
        self.submit(text)
        self.log.see("end")

    def _enter(self, event):
        self.send()
        return "break"

    def _up(self, event):
        self._replace_entry(self.history.previous(self.entry.get()))
        return "break"

    def _down(self, event):
        self._replace_entry(self.history.next(self.entry.get()))
        return "break"

    def _replace_entry(self, text):
        self.entry.delete(0, "end")
        self.entry.insert(0, text)
        self.entry.icursor("end")

    def _change_nick(self, event):
        nick = self.nick_var.get().strip()
        if nick and nick != self.model.nick:
            self.submit(f"/nick {nick}")
        self.entry.focus_set()
        return "break"

    def _focus_in(self, event):
        if not self.model.focused:
            self.model.set_focus(True)

    def _focus_out(self, event):
        # Focus moving between our own widgets also sends FocusOut; only a
        # focus that left the window counts.
        self.root.after_idle(self._check_focus)

    def _check_focus(self):
        try:
            inside = self.root.focus_get() is not None
        except (KeyError, tk.TclError):
            inside = False
        if not inside and self.model.focused:
            self.model.set_focus(False)

    def close(self):
        """Stop the view's own timers (before the root is destroyed)."""
        if self._ticking is not None:
            self.root.after_cancel(self._ticking)
            self._ticking = None
