// twisted-chat in the browser: the line protocol's JSON mode over a WebSocket
// at /ws (docs/protocol.rst). Each text frame sent is one command line; each
// frame received is one JSON event.
//
// Safety: text from the server is NEVER parsed as HTML. Every node is built
// with createElement/textContent; links are <a> elements made only from
// http(s) URLs. The password lives in memory only (for /login on reconnect).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const BASE_TITLE = "twisted-chat";
  const MAX_LINES = 2000; // per conversation pane; older lines are dropped

  const state = {
    ws: null,
    phase: "signin", // signin -> chat
    nick: "", // our current nick
    wantNick: "",
    password: null, // memory only, for /login on every (re)connect
    protocol: 1,
    server: BASE_TITLE,
    convs: new Map(), // key -> conversation
    active: null, // key of the shown conversation
    wanted: [], // room names we are in, in join order (rejoined after a reconnect)
    registered: false, // this socket has joined its first room
    pendingActive: null, // key to show once we join it
    closedByUser: false,
    attempt: 0,
    timer: null,
    everConnected: false,
    sent: [], // input history (Up/Down)
    sentAt: 0,
    nickTries: 0,
    early: [], // lines that came before any conversation was shown
  };

  // ---------------------------------------------------------------- helpers

  function fold(name) {
    return name.normalize("NFKC").toLowerCase();
  }
  function roomKey(name) {
    return "#" + fold(name.replace(/^#/, ""));
  }
  function privateKey(nick) {
    return "@" + fold(nick);
  }
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function pad(n) {
    return String(n).padStart(2, "0");
  }
  function timeNode(ts) {
    const when = ts ? new Date(ts) : new Date();
    const t = el("time");
    t.dateTime = when.toISOString();
    t.title = when.toLocaleString();
    let text = pad(when.getHours()) + ":" + pad(when.getMinutes());
    const now = new Date();
    if (when.toDateString() !== now.toDateString()) {
      text = when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" + pad(when.getDate()) + " " + text;
    }
    t.textContent = text;
    return t;
  }

  // URLs become links; everything else stays text (text nodes, never HTML).
  const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  function richText(text) {
    const frag = document.createDocumentFragment();
    let last = 0;
    text.replace(URL_RE, (match, offset) => {
      let url = match.replace(/[.,;:!?)\]}]+$/, "");
      if (url.endsWith(")") === false && match.length > url.length && match[url.length] === ")" &&
          url.includes("(")) {
        url += ")";
      }
      let parsed = null;
      try {
        parsed = new URL(url);
      } catch (e) {
        parsed = null;
      }
      if (parsed && (parsed.protocol === "http:" || parsed.protocol === "https:")) {
        if (offset > last) frag.append(document.createTextNode(text.slice(last, offset)));
        const a = el("a", null, url);
        a.href = parsed.href;
        a.target = "_blank";
        a.rel = "noopener noreferrer nofollow";
        frag.append(a);
        last = offset + url.length;
      }
      return match;
    });
    if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  function mentions(text) {
    if (!state.nick) return false;
    const n = state.nick.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    return new RegExp("(^|[^\\p{L}\\p{N}_-])" + n + "($|[^\\p{L}\\p{N}_-])", "iu").test(text);
  }

  // ----------------------------------------------------------- conversations

  function conv(key, name, kind) {
    let c = state.convs.get(key);
    if (!c) {
      c = {
        key, name, kind, // kind: "room" | "private"
        pane: el("div", "pane"),
        members: new Map(), // nick -> {op, voiced}
        topic: "",
        joined: false,
        unread: 0,
        mention: false,
        ids: new Set(),
        lastId: 0, // newest message id seen
        oldest: null, // oldest message id loaded
        atStart: false, // nothing older to load
        loadingOlder: false,
        gapFrom: null, // after a reconnect: page back until this id
        marker: null,
        lastKey: 0, // sort key of the last line
      };
      state.convs.set(key, c);
      renderConvList();
    }
    return c;
  }

  function activeConv() {
    return state.active ? state.convs.get(state.active) : null;
  }

  function isVisible(c) {
    return c && c.key === state.active && !document.hidden;
  }

  // Lines are kept in order of their sort key: a message's id, or for other
  // lines the key of the line before them. Replayed and paged history lands
  // in place; a message already shown (same id) is never shown twice.
  function addLine(c, node, key) {
    const pane = c.pane;
    if (key === undefined) key = c.lastKey;
    node.dataset.key = key;
    let before = null;
    let child = pane.lastElementChild;
    while (child && Number(child.dataset.key) > key) {
      before = child;
      child = child.previousElementSibling;
    }
    const log = $("log");
    const shown = log.firstElementChild === pane;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const height = log.scrollHeight;
    pane.insertBefore(node, before);
    if (!before) c.lastKey = Math.max(c.lastKey, key);
    while (pane.childElementCount > MAX_LINES) pane.firstElementChild.remove();
    if (shown) {
      if (before && node.offsetTop < log.scrollTop + 10) {
        log.scrollTop += log.scrollHeight - height; // older lines above: keep the view still
      } else if (!before && atBottom) {
        log.scrollTop = log.scrollHeight;
      }
    }
    return node;
  }

  function sysLine(c, text, cls, ts) {
    const line = el("div", "line " + (cls || "sys"));
    line.append(timeNode(ts), document.createTextNode(text));
    if (!c) c = activeConv();
    if (!c) {
      state.early.push(line); // before the first room (the motd): shown in it
      return line;
    }
    return addLine(c, line);
  }

  function messageLine(c, ev, from, own) {
    if (ev.id !== undefined && ev.id !== null) {
      if (c.ids.has(ev.id)) return null;
      c.ids.add(ev.id);
      c.lastId = Math.max(c.lastId, ev.id);
      if (ev.history && (c.oldest === null || ev.id < c.oldest)) c.oldest = ev.id;
    }
    const line = el("div", "line msg" + (ev.action ? " action" : "") + (own ? " own" : ""));
    line.dataset.id = ev.id;
    line.append(timeNode(ev.ts));
    if (ev.action) {
      line.append(document.createTextNode("* "), el("span", "nick", from));
    } else {
      line.append(el("span", "nick", from));
    }
    const body = el("span", "text");
    body.append(richText(ev.text || ""));
    line.append(body);
    const mentioned = !own && mentions(ev.text || "");
    if (mentioned) line.classList.add("mentioned");
    const key = typeof ev.id === "number" ? ev.id : c.lastKey;
    if (!ev.history && !own && !isVisible(c)) {
      if (!c.marker) {
        c.marker = el("div", "unread-marker");
        c.marker.setAttribute("role", "separator");
        c.marker.append(el("span", null, "new messages"));
        addLine(c, c.marker, key - 0.5);
      }
      c.unread += 1;
      if (mentioned || c.kind === "private") {
        c.mention = c.mention || mentioned;
        if (document.hidden || c.key !== state.active) notify(c, from, ev.text || "");
      }
      renderConvList();
    }
    return addLine(c, line, key);
  }

  function show(key) {
    const c = state.convs.get(key);
    if (!c) return;
    const old = activeConv();
    if (old && old !== c && old.marker) {
      old.marker.remove();
      old.marker = null;
    }
    state.active = key;
    for (const line of state.early.splice(0)) addLine(c, line, 0);
    c.unread = 0;
    c.mention = false;
    const log = $("log");
    log.replaceChildren(c.pane);
    log.scrollTop = log.scrollHeight;
    $("conv-title").textContent = c.kind === "room" ? "#" + c.name : c.name;
    renderTopic();
    renderMembers();
    renderConvList();
    closeDrawers();
    maybeLoadOlder();
  }

  function removeConv(key) {
    const c = state.convs.get(key);
    if (!c) return;
    state.convs.delete(key);
    if (state.active === key) {
      state.active = null;
      const next = state.convs.keys().next();
      if (!next.done) show(next.value);
      else {
        $("log").replaceChildren();
        $("conv-title").textContent = "";
        renderTopic();
        renderMembers();
      }
    }
    renderConvList();
  }

  // ------------------------------------------------------------- rendering

  function renderConvList() {
    const rooms = $("room-list");
    const privates = $("private-list");
    const roomItems = [];
    const privateItems = [];
    let total = 0;
    for (const c of state.convs.values()) {
      if (c.kind === "server") continue;
      total += c.unread;
      const li = el("li");
      const b = el("button", "conv");
      b.type = "button";
      b.dataset.key = c.key;
      if (c.key === state.active) b.setAttribute("aria-current", "true");
      b.append(el("span", "name", c.kind === "room" ? "#" + c.name : c.name));
      if (c.mention) {
        const m = el("span", "mention", "@");
        m.title = "you were mentioned";
        m.setAttribute("aria-label", "mentioned");
        b.append(m);
      }
      if (c.unread) {
        const u = el("span", "unread", c.unread);
        u.setAttribute("aria-label", c.unread + " unread");
        b.append(u);
      }
      if (c.kind === "room" && !c.joined) b.classList.add("parted");
      b.addEventListener("click", () => show(c.key));
      li.append(b);
      const x = el("button", "leave", "\u00d7");
      x.type = "button";
      x.setAttribute("aria-label", (c.kind === "room" ? "Leave #" : "Close ") + c.name);
      x.addEventListener("click", () => leave(c));
      li.append(x);
      (c.kind === "room" ? roomItems : privateItems).push(li);
    }
    rooms.replaceChildren(...roomItems);
    privates.replaceChildren(...privateItems);
    document.title = (total ? "(" + total + ") " : "") + (state.server || BASE_TITLE);
  }

  function renderTopic() {
    const c = activeConv();
    const t = $("topic");
    t.replaceChildren();
    if (c && c.topic) t.append(richText(c.topic));
    t.title = c && c.topic ? c.topic : "";
  }

  function renderMembers() {
    const c = activeConv();
    const list = $("member-list");
    const items = [];
    if (c && c.kind === "room") {
      const nicks = [...c.members.entries()].sort((a, b) => {
        const ra = a[1].op ? 0 : a[1].voiced ? 1 : 2;
        const rb = b[1].op ? 0 : b[1].voiced ? 1 : 2;
        return ra - rb || a[0].localeCompare(b[0], undefined, { sensitivity: "base" });
      });
      for (const [nick, m] of nicks) {
        const li = el("li", m.op ? "op" : m.voiced ? "voiced" : "", nick);
        if (m.op) li.title = "operator";
        else if (m.voiced) li.title = "voiced";
        items.push(li);
      }
    }
    list.replaceChildren(...items);
    $("member-count").textContent = items.length ? "(" + items.length + ")" : "";
  }

  function setMember(c, nick, flags) {
    const m = c.members.get(nick) || { op: false, voiced: false };
    Object.assign(m, flags || {});
    c.members.set(nick, m);
    if (c.key === state.active) renderMembers();
  }

  function dropMember(c, nick) {
    if (c.members.delete(nick) && c.key === state.active) renderMembers();
  }

  function roomsWith(nick) {
    return [...state.convs.values()].filter((c) => c.kind === "room" && c.members.has(nick));
  }

  // --------------------------------------------------------- notifications

  function notify(c, from, text) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden) return;
    try {
      const n = new Notification(c.kind === "room" ? from + " in #" + c.name : from, {
        body: text.slice(0, 200),
        tag: c.key,
      });
      n.onclick = () => {
        window.focus();
        show(c.key);
        n.close();
      };
    } catch (e) {
      // Some browsers allow notifications only from a service worker.
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      const c = activeConv();
      if (c) {
        c.unread = 0;
        c.mention = false;
        renderConvList();
      }
    }
  });

  // ------------------------------------------------------------ connection

  function wsURL() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function connect() {
    clearTimeout(state.timer);
    state.timer = null;
    state.registered = false;
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onmessage = (msg) => {
      if (ws !== state.ws) return;
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (e) {
        sysLine(null, String(msg.data), "info"); // a text line (e.g. server-full)
        return;
      }
      try {
        handle(ev);
      } catch (e) {
        console.error("event", ev, e);
      }
    };
    ws.onclose = () => {
      if (ws !== state.ws) return;
      state.ws = null;
      if (state.phase === "signin") {
        if (!$("signin-status").textContent) {
          $("signin-status").textContent = "Could not connect to the server.";
        }
        $("connect").disabled = false;
        return;
      }
      if (state.closedByUser) {
        backToSignin("");
        return;
      }
      for (const c of state.convs.values()) if (c.kind === "room") c.joined = false;
      renderConvList();
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const delay = Math.min(30000, 500 * 2 ** state.attempt) * (0.75 + Math.random() / 2);
    state.attempt += 1;
    $("conn-status").textContent = "reconnecting in " + Math.ceil(delay / 1000) + " s\u2026";
    state.timer = setTimeout(connect, delay);
  }

  function send(line) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(line);
      return true;
    }
    sysLine(null, "not connected: that was not sent", "error");
    return false;
  }

  function backToSignin(message) {
    state.phase = "signin";
    state.closedByUser = false;
    clearTimeout(state.timer);
    $("chat-view").hidden = true;
    $("signin-view").hidden = false;
    $("signin-status").textContent = message || "";
    $("connect").disabled = false;
    $("nick").focus();
  }

  function enterChat() {
    if (state.phase === "chat") return;
    state.phase = "chat";
    state.everConnected = true;
    $("signin-view").hidden = true;
    $("chat-view").hidden = false;
    $("message").focus();
  }

  // After registration on a reconnect (the server put us in ``firstRoom``):
  // back into every room we were in, and out of that one if we had left it.
  function rejoin(firstRoom, wasWanted) {
    const rooms = state.wanted.filter((r) => roomKey(r) !== roomKey(firstRoom));
    if (state.protocol < 2) {
      // One room at a time: the last one we were in.
      const last = state.wanted[state.wanted.length - 1];
      if (last && roomKey(last) !== roomKey(firstRoom)) {
        state.pendingActive = roomKey(last);
        send("/join " + last);
      }
      return;
    }
    for (const room of rooms) send("/join " + room);
    if (!wasWanted && state.wanted.length) send("/part " + firstRoom);
    if (state.active && state.convs.get(state.active)?.kind === "room") {
      state.pendingActive = state.active;
    }
  }

  // ----------------------------------------------------------------- events

  function handle(ev) {
    const f = HANDLERS[ev.type];
    if (f) f(ev);
  }

  function ownJoin(ev) {
    const c = conv(roomKey(ev.room), ev.room, "room");
    const first = !state.registered;
    const wasWanted = state.wanted.some((r) => roomKey(r) === c.key);
    state.registered = true;
    c.joined = true;
    c.members.clear();
    if (c.lastId) c.gapFrom = c.lastId; // a rejoin: fill any gap back to here
    enterChat();
    if (first) {
      state.attempt = 0;
      state.nickTries = 0;
      $("conn-status").textContent = "";
      if (state.reconnecting) rejoin(ev.room, wasWanted);
      state.reconnecting = true; // from now on, a new socket is a reconnect
    }
    if (!state.wanted.some((r) => roomKey(r) === c.key)) state.wanted.push(ev.room);
    if (!state.active || state.pendingActive === c.key || !state.convs.get(state.active)) {
      state.pendingActive = null;
      show(c.key);
    }
    sysLine(c, "you joined #" + ev.room, "sys", ev.ts);
  }

  const HANDLERS = {
    welcome(ev) {
      state.protocol = ev.protocol || 1;
      state.server = ev.server || BASE_TITLE;
      state.nick = ev.nick;
      if (ev.motd) sysLine(null, ev.motd, "info");
      if (state.password !== null) {
        send("/login " + state.wantNick + " " + state.password);
      } else if (fold(state.wantNick) !== fold(ev.nick)) {
        send("/nick " + state.wantNick);
      } else {
        send("/join " + (state.wanted[0] || "lobby"));
      }
    },
    join(ev) {
      const c = conv(roomKey(ev.room), ev.room, "room");
      if (ev.nick === state.nick) {
        ownJoin(ev);
        return;
      }
      setMember(c, ev.nick);
      sysLine(c, ev.nick + " joined", "sys", ev.ts);
    },
    names(ev) {
      const c = conv(roomKey(ev.room), ev.room, "room");
      const ops = new Set(ev.ops || []);
      const voiced = new Set(ev.voiced || []);
      c.members.clear();
      for (const nick of ev.nicks || []) {
        c.members.set(nick, { op: ops.has(nick), voiced: voiced.has(nick) });
      }
      if (c.key === state.active) renderMembers();
    },
    topic(ev) {
      const c = conv(roomKey(ev.room), ev.room, "room");
      const changed = c.topic !== ev.topic;
      c.topic = ev.topic || "";
      if (c.key === state.active) renderTopic();
      if (changed || !c.topicShown) {
        c.topicShown = true;
        sysLine(c, ev.topic ? "topic: " + ev.topic + (ev.by ? " (set by " + ev.by + ")" : "")
          : "no topic" + (ev.by ? " (cleared by " + ev.by + ")" : ""), "sys", ev.ts);
      }
    },
    part(ev) {
      const c = state.convs.get(roomKey(ev.room));
      if (!c) return;
      if (ev.nick === state.nick) {
        c.joined = false;
        state.wanted = state.wanted.filter((r) => roomKey(r) !== c.key);
        sysLine(c, "you left #" + c.name, "sys", ev.ts);
        if (state.protocol >= 2) removeConv(c.key);
        else renderConvList();
        return;
      }
      dropMember(c, ev.nick);
      sysLine(c, ev.nick + " left (" + ev.reason + ")", "sys", ev.ts);
    },
    quit(ev) {
      for (const c of roomsWith(ev.nick)) {
        dropMember(c, ev.nick);
        sysLine(c, ev.nick + " quit (" + ev.reason + ")", "sys", ev.ts);
      }
      if (state.registered && state.password === null && fold(ev.nick) === fold(state.wantNick) &&
          fold(state.nick) !== fold(state.wantNick)) {
        send("/nick " + state.wantNick); // our nick is free again: take it back
      }
    },
    nick(ev) {
      if (ev.old === state.nick) {
        state.nick = ev.new;
        if (state.phase === "signin" && fold(ev.new) === fold(state.wantNick) &&
            state.convs.size && state.wanted.length) {
          enterChat();
        }
      }
      for (const c of roomsWith(ev.old)) {
        const m = c.members.get(ev.old);
        c.members.delete(ev.old);
        setMember(c, ev.new, m);
        sysLine(c, ev.old + " is now known as " + ev.new, "sys", ev.ts);
      }
      const p = state.convs.get(privateKey(ev.old));
      if (p) sysLine(p, ev.old + " is now known as " + ev.new, "sys", ev.ts);
    },
    kick(ev) {
      const c = state.convs.get(roomKey(ev.room));
      if (!c) return;
      const why = ev.reason ? " (" + ev.reason + ")" : "";
      if (ev.nick === state.nick) {
        c.joined = false;
        c.members.clear();
        state.wanted = state.wanted.filter((r) => roomKey(r) !== c.key);
        sysLine(c, ev.by + " kicked you" + why, "error", ev.ts);
        renderConvList();
        renderMembers();
        return;
      }
      dropMember(c, ev.nick);
      sysLine(c, ev.by + " kicked " + ev.nick + why, "sys", ev.ts);
    },
    mode(ev) {
      const c = state.convs.get(roomKey(ev.room));
      if (!c) return;
      const on = ev.on;
      let text;
      if (ev.mode === "op" || ev.mode === "voice") {
        if (c.members.has(ev.nick)) {
          setMember(c, ev.nick, ev.mode === "op" ? { op: on } : { voiced: on });
        }
        text = ev.by + (on ? " gives " : " takes ") + (ev.mode === "op" ? "operator" : "voice") +
          (on ? " to " : " from ") + ev.nick;
      } else if (ev.mode === "ban") {
        text = ev.by + (on ? " bans " : " unbans ") + (ev.nick || "");
      } else {
        text = ev.by + " sets " + ev.mode + " " + (ev.value !== undefined && ev.value !== null ? ev.value : on ? "on" : "off");
      }
      sysLine(c, text, "sys", ev.ts);
    },
    invite(ev) {
      sysLine(null, ev.by + " invites you to #" + ev.room + " (/join " + ev.room + ")", "info", ev.ts);
      const c = activeConv();
      if (c) notify(c, ev.by, "invites you to #" + ev.room);
    },
    flags(ev) {
      const parts = ["topic-lock", "moderated", "invite-only", "key", "limit"].map((k) => {
        const v = ev[k];
        return k + " " + (v === true ? "on" : v === false || v === null || v === undefined ? "off" : v);
      });
      sysLine(state.convs.get(roomKey(ev.room)), "#" + ev.room + ": " + parts.join(", "), "info");
    },
    bans(ev) {
      const c = state.convs.get(roomKey(ev.room));
      const list = ev.bans || [];
      sysLine(c, list.length ? "bans in #" + ev.room + ":" : "no bans in #" + ev.room, "info");
      for (const b of list) sysLine(c, "  " + b.entry + " (" + b.nick + ", by " + b.by + ")", "info");
    },
    presence(ev) {
      const c = state.convs.get(roomKey(ev.room));
      if (!c) return;
      for (const nick of ev.left || []) c.members.delete(nick);
      for (const nick of ev.joined || []) if (!c.members.has(nick)) c.members.set(nick, { op: false, voiced: false });
      if (c.key === state.active) renderMembers();
      const parts = [];
      if ((ev.joined || []).length) parts.push(ev.joined.join(", ") + " joined");
      if ((ev.left || []).length) parts.push(ev.left.join(", ") + " left");
      if (parts.length) sysLine(c, parts.join("; "), "sys", ev.ts);
    },
    message(ev) {
      const c = conv(roomKey(ev.room), ev.room, "room");
      messageLine(c, ev, ev.nick, ev.nick === state.nick && !ev.history);
    },
    private(ev) {
      const own = ev.from === state.nick;
      const other = own ? ev.to : ev.from;
      const c = conv(privateKey(other), other, "private");
      messageLine(c, ev, ev.from, own);
      if (own && state.pendingActive === c.key) {
        state.pendingActive = null;
        show(c.key);
      }
    },
    "history-end"(ev) {
      const c = state.convs.get(roomKey(ev.room));
      if (!c) return;
      c.loadingOlder = false;
      if (ev.oldest !== undefined && (c.oldest === null || ev.oldest < c.oldest)) c.oldest = ev.oldest;
      if (ev.count < ev.limit && c.gapFrom === null && !c.atStart) {
        // Fewer than asked for: nothing older to load.
        c.atStart = true;
        addLine(c, el("div", "history-note", "beginning of the history of #" + c.name), -1);
      }
      const paged = c.paging;
      c.paging = false;
      if (paged) setTimeout(maybeLoadOlder, 0); // still at the top: the next page
      // A rejoin replays the newest messages; page back until the replay
      // meets what was already shown, so that nothing is missing.
      if (c.gapFrom !== null) {
        if (ev.count >= ev.limit && ev.oldest > c.gapFrom + 1) {
          requestOlder(c, ev.oldest, false);
        } else {
          c.gapFrom = null;
        }
      }
    },
    rooms(ev) {
      const list = (ev.rooms || []).map((r) => r.name + " (" + r.members + ")");
      sysLine(null, "rooms: " + (list.join(", ") || "(none)"), "info");
    },
    error(ev) {
      if (state.phase === "signin") {
        if (["nick-taken", "nick-invalid", "nick-reserved", "login-failed", "login-required"].includes(ev.code)) {
          state.closedByUser = true;
          if (state.ws) state.ws.close();
          backToSignin(ev.message);
          return;
        }
      } else if (ev.code === "nick-taken" && !state.registered && state.nickTries < 3) {
        // A reconnect while our old connection lingers (or, in a cluster,
        // while a killed server still holds the nick): take a variant for
        // now; the nick itself is asked for again when its holder quits.
        state.nickTries += 1;
        send("/nick " + state.wantNick + "_".repeat(state.nickTries));
        return;
      }
      sysLine(null, ev.code + ": " + ev.message, "error");
    },
    info(ev) {
      sysLine(null, ev.message, "info");
    },
    pong(ev) {
      if (ev.token && ev.token.startsWith("shown:")) sysLine(null, "pong " + ev.token.slice(6), "info");
    },
    bye(ev) {
      if (ev.reason === "goodbye") state.closedByUser = true;
      sysLine(null, "bye: " + ev.reason, "info");
    },
  };

  // ------------------------------------------------------------ history

  function requestOlder(c, before, visible) {
    if (c.kind !== "room" || !c.joined || c.loadingOlder) return;
    c.loadingOlder = true;
    c.paging = visible;
    if (state.protocol >= 2) send("/history " + c.name + " before " + before);
    else send("/history before " + before);
  }

  function maybeLoadOlder() {
    const c = activeConv();
    const log = $("log");
    if (!c || c.atStart || c.loadingOlder || c.oldest === null) return;
    if (log.scrollTop < 60) requestOlder(c, c.oldest, true);
  }

  // ------------------------------------------------------------ commands

  function leave(c) {
    if (c.kind === "room" && c.joined) {
      if (state.protocol >= 2) send("/part " + c.name);
      else sysLine(c, "this server keeps you in one room: /join another to leave", "info");
      return;
    }
    removeConv(c.key);
  }

  function submit(text) {
    const c = activeConv();
    const v2 = state.protocol >= 2;
    if (text.startsWith("/") && !text.startsWith("//")) {
      const space = text.indexOf(" ");
      const cmd = (space < 0 ? text.slice(1) : text.slice(1, space)).toLowerCase();
      const rest = space < 0 ? "" : text.slice(space + 1).trim();
      const room = c && c.kind === "room" ? c.name : null;
      switch (cmd) {
        case "me":
          if (c && c.kind === "private") {
            send("/msg " + c.name + " * " + state.nick + " " + rest);
          } else if (v2 && room) {
            send("/describe " + room + " " + rest);
          } else {
            send(text);
          }
          return;
        case "join":
          if (rest) state.pendingActive = roomKey(rest.split(/\s+/)[0]);
          send(text);
          return;
        case "part":
          if (!rest && room) send("/part " + room);
          else send(text);
          return;
        case "who":
        case "history":
          if (!rest && room && v2) send("/" + cmd + " " + room);
          else send(text);
          return;
        case "msg":
        case "query": {
          const [nick, ...words] = rest.split(/\s+/);
          if (!nick) break;
          const body = words.join(" ");
          if (cmd === "query" || !body) {
            conv(privateKey(nick), nick, "private");
            show(privateKey(nick));
            return;
          }
          state.pendingActive = privateKey(nick);
          send("/msg " + nick + " " + body);
          return;
        }
        case "ping":
          send("/ping shown:" + rest);
          return;
        case "clear":
          if (c) {
            c.pane.replaceChildren();
            c.marker = null;
          }
          return;
        case "quit":
          state.closedByUser = true;
          send(text);
          return;
        default:
          break;
      }
      send(text);
      return;
    }
    if (!c || c.kind === "server") {
      sysLine(null, "join a room first: /join ROOM", "error");
      return;
    }
    // "//text" is the literal "/text"; /say and /msg take it as it is.
    const literal = text.startsWith("//") ? text.slice(1) : text;
    if (c.kind === "private") {
      send("/msg " + c.name + " " + literal);
    } else if (v2) {
      send("/say " + c.name + " " + literal);
    } else {
      send(text);
    }
  }

  // ------------------------------------------------------------- drawers

  function closeDrawers() {
    for (const [id, button] of [["rooms", "show-rooms"], ["members", "show-members"]]) {
      $(id).classList.remove("open");
      $(button).setAttribute("aria-expanded", "false");
    }
  }
  function toggleDrawer(id, button) {
    const open = !$(id).classList.contains("open");
    closeDrawers();
    if (open) {
      $(id).classList.add("open");
      $(button).setAttribute("aria-expanded", "true");
    }
  }

  // ---------------------------------------------------------------- wiring

  function start() {
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const nick = $("nick").value.trim();
      if (!nick) return;
      const password = $("password").value;
      $("password").value = ""; // not kept in the form
      state.wantNick = nick;
      state.password = password ? password : null;
      state.closedByUser = false;
      state.nickTries = 0;
      $("signin-status").textContent = "";
      $("connect").disabled = true;
      if ("Notification" in window && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
      }
      connect();
    });
    $("send-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("message");
      const text = input.value;
      if (!text.trim()) return;
      state.sent.push(text);
      if (state.sent.length > 100) state.sent.shift();
      state.sentAt = state.sent.length;
      input.value = "";
      submit(text);
    });
    $("message").addEventListener("keydown", (e) => {
      if (e.key !== "ArrowUp" && e.key !== "ArrowDown") return;
      if (!state.sent.length) return;
      e.preventDefault();
      state.sentAt = Math.max(0, Math.min(state.sent.length, state.sentAt + (e.key === "ArrowUp" ? -1 : 1)));
      $("message").value = state.sent[state.sentAt] || "";
    });
    $("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const room = $("join-room").value.trim().replace(/^#/, "");
      if (!room) return;
      $("join-room").value = "";
      state.pendingActive = roomKey(room);
      send("/join " + room);
    });
    $("log").addEventListener("scroll", maybeLoadOlder);
    $("show-rooms").addEventListener("click", () => toggleDrawer("rooms", "show-rooms"));
    $("show-members").addEventListener("click", () => toggleDrawer("members", "show-members"));
    $("nick").focus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
