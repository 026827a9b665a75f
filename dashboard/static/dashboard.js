// Fleet dashboard: live state over Server-Sent Events, polling fallback, operator commands.
// Everything robots report is untrusted: it only ever reaches the page through textContent,
// attribute values set with setAttribute, or new Option(); never innerHTML.
"use strict";
(function () {
  const app = document.getElementById("app");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const stateUrl = app.dataset.stateUrl;
  const eventsUrl = app.dataset.eventsUrl;
  const commandUrl = app.dataset.commandUrl;
  const ACTIONS = app.dataset.actions.split(",");
  // Which buttons make sense in which recorder state (others stay visible but disabled: no layout jumps).
  const ALLOWED = {
    recording: ["stop", "pause", "split"],
    paused: ["stop", "resume", "split"],
  };
  const POLL_MS = 5000;
  const MAX_BACKOFF_MS = 30000;

  const filter = { robot: "", state: "", limit: 50, offset: 0 };
  let source = null;
  let backoff = 1000;
  let reconnectTimer = null;
  let pollTimer = null;
  let clockOffset = 0; // server_time - local time, seconds
  let last = null;

  // --- formatting -----------------------------------------------------------------------------
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    let i = 0;
    while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + UNITS[i];
  }
  function rate(n) { return n === null || n === undefined ? "–" : bytes(n) + "/s"; }
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function ago(ts) {
    if (!ts) return "never";
    return duration(Date.now() / 1000 + clockOffset - ts) + " ago";
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  // Local wall-clock time of a server timestamp; the date too unless it is today.
  function clock(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }
  function isoTitle(ts) { return ts ? new Date(ts * 1000).toISOString() : ""; }
  // "rate_limited, retry in 40 s (21:30:05)" for an upload the robot says is waiting.
  function waiting(reason, retryAt) {
    if (!retryAt) return reason;
    const left = retryAt - (Date.now() / 1000 + clockOffset);
    return reason + (left > 0 ? ", retry in " + duration(left) : ", retrying") + " (" + clock(retryAt) + ")";
  }
  function num(n, digits) { return n === null || n === undefined ? "–" : Number(n).toFixed(digits || 0); }
  function cls(prefix, value) { return prefix + String(value || "unknown").toLowerCase().replace(/[^a-z0-9_-]/g, "_"); }

  // --- DOM helpers: build once, update text in place --------------------------------------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children || []) node.append(child);
    return node;
  }
  function setText(node, value) {
    const t = value === null || value === undefined ? "" : String(value);
    if (node.textContent !== t) node.textContent = t;
  }
  function setTitle(node, value) {
    const t = value === null || value === undefined ? "" : String(value);
    if (node.getAttribute("title") !== t) node.setAttribute("title", t);
  }
  // Keyed reconciliation: rows keep their DOM nodes across updates (focus, hover and scroll stay put).
  function sync(container, items, key, create, update) {
    const existing = new Map();
    for (const child of Array.from(container.children)) existing.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const k = String(key(item));
      let node = existing.get(k);
      if (node) existing.delete(k);
      else { node = create(item); node.dataset.key = k; }
      update(node, item);
      const expected = previous ? previous.nextSibling : container.firstChild;
      if (node !== expected) container.insertBefore(node, expected);
      previous = node;
    }
    for (const node of existing.values()) node.remove();
  }
  function row(labels) {
    const tr = el("tr");
    for (const label of labels) tr.append(el("td", { "data-label": label }));
    return tr;
  }
  function sparkline(svg, values, extraClass) {
    const max = Math.max(1, ...values);
    const step = values.length > 1 ? 100 / (values.length - 1) : 100;
    const points = values.map((v, i) => (i * step).toFixed(2) + "," + (23 - (v / max) * 22).toFixed(2)).join(" ");
    let line = svg.querySelector("polyline" + (extraClass ? "." + extraClass : ":not(.limited)"));
    if (!line) {
      line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      if (extraClass) line.setAttribute("class", extraClass);
      svg.append(line);
    }
    line.setAttribute("points", points);
  }

  // --- sections ---------------------------------------------------------------------------------
  function renderServer(server) {
    const $ = (id) => document.getElementById(id);
    setText($("s-health"), server.status);
    $("s-health").className = "value " + cls("state-", server.status === "ok" ? "online" : "failed");
    setText($("s-version"), server.version ? "version " + server.version : "");
    const st = server.storage || {};
    setText($("s-free"), bytes(st.free) + " free");
    $("s-used-bar").style.width = st.total ? ((100 * st.used) / st.total).toFixed(1) + "%" : "0";
    setText($("s-used"), bytes(st.used) + " used · " + bytes(st.stored_bytes) + " stored");
    setText($("s-active"), server.active_uploads);
    setText($("s-robots"), server.robots_online + " of " + server.robots_total + " robots online");
    const req = server.requests || { points: [] };
    setText($("s-requests"), req.requests);
    setText($("s-429"), req.rate_limited);
    setText($("s-errors"), req.errors ? req.errors + " server errors" : "");
    const pts = req.points || [];
    const perSecond = pts.map((p) => p.bytes_in / (req.bucket_seconds || 10));
    const recent = perSecond.slice(-6);
    setText($("s-rate"), rate(recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0));
    sparkline($("s-rate-spark"), perSecond);
    sparkline($("s-req-spark"), pts.map((p) => p.requests));
    sparkline($("s-req-spark"), pts.map((p) => p.rate_limited), "limited");
  }

  const FLEET_LABELS = ["Robot", "Status", "Recording", "Current bag", "Bag size", "Disk free", "Queue", "Upload rate", "Last error"];
  function renderFleet(fleet) {
    setText(document.getElementById("fleet-count"), fleet.length ? "(" + fleet.filter((r) => r.online).length + " online of " + fleet.length + ")" : "");
    document.getElementById("fleet-empty").hidden = fleet.length > 0;
    sync(document.getElementById("fleet-rows"), fleet, (r) => r.robot_id, () => {
      const tr = row(FLEET_LABELS);
      for (const i of [4, 5, 6, 7]) tr.children[i].className = "num";
      tr.children[1].append(el("span", { class: "state" }), el("span", { class: "reason seen" }));
      return tr;
    }, (tr, r) => {
      const c = tr.children;
      setText(c[0], r.robot_id); setTitle(c[0], r.robot_id);
      const status = c[1].children[0];
      setText(status, r.online ? "online" : "offline");
      status.className = "state " + cls("state-", r.online ? "online" : "offline");
      c[1].children[1].dataset.ts = r.last_seen;
      setText(c[1].children[1], ago(r.last_seen));
      setText(c[2], r.recording_state); c[2].className = "state " + cls("state-", r.recording_state);
      setText(c[3], r.current_bag || "–"); setTitle(c[3], r.current_bag);
      setText(c[4], bytes(r.current_bag_bytes));
      setText(c[5], bytes(r.disk_free));
      setText(c[6], r.queue_length);
      setText(c[7], r.online ? rate(r.upload_rate) : "–");
      const blocked = r.uploads_blocked;
      const problem = r.last_error || (blocked ? "uploads waiting: " + waiting(blocked.reason, blocked.retry_at) : "");
      setText(c[8], problem); setTitle(c[8], problem); c[8].className = r.last_error ? "err" : (problem ? "warn" : "");
      if (r.heartbeat_rejected && !r.online) {
        setText(status, "rejected");
        status.className = "state " + cls("state-", "failed");
        setTitle(c[1], "heartbeat rejected (HTTP " + r.heartbeat_rejected.status + "): " + r.heartbeat_rejected.reason);
      } else {
        setTitle(c[1], "");
      }
    });
  }

  function latestCommands(commands) {
    const byRobot = new Map();
    for (const c of commands || []) if (!byRobot.has(c.robot_id)) byRobot.set(c.robot_id, c);
    return byRobot;
  }

  function renderRecordings(fleet, commands) {
    const shown = filter.robot ? fleet.filter((r) => r.robot_id === filter.robot) : fleet;
    const latest = latestCommands(commands);
    sync(document.getElementById("rec-cards"), shown, (r) => r.robot_id, (r) => {
      const card = el("article", { class: "rec" });
      const header = el("header", {}, [el("span", { class: "name" }), el("span", { class: "state" })]);
      const actions = el("div", { class: "actions" });
      for (const action of ACTIONS) {
        const button = el("button", { type: "button", "data-action": action }, [action]);
        button.addEventListener("click", () => sendCommand(card.dataset.key, action, card));
        actions.append(button);
      }
      const topics = el("table", {}, [
        el("thead", {}, [el("tr", {}, [el("th", {}, ["Topic"]), el("th", { class: "num" }, ["Messages"]), el("th", { class: "num" }, ["Rate"])])]),
        el("tbody"),
      ]);
      card.append(header, el("div", { class: "meta" }), actions, el("div", { class: "cmd" }), el("div", { class: "topics" }, [topics]));
      return card;
    }, (card, r) => {
      const name = card.querySelector(".name");
      setText(name, r.robot_id); setTitle(name, r.robot_id);
      const state = card.querySelector("header .state");
      setText(state, r.online ? r.recording_state : r.recording_state + " (offline)");
      state.className = "state " + cls("state-", r.online ? r.recording_state : "offline");
      setText(card.querySelector(".meta"),
        bytes(r.bytes_written) + " written · " + num(r.splits) + " splits · " + duration(r.elapsed) + " elapsed" +
        (r.dropped ? " · " + num(r.dropped) + " dropped" : ""));
      const allowed = ALLOWED[r.recording_state] || ["start"];
      for (const button of card.querySelectorAll(".actions button")) {
        button.disabled = !r.online || card.dataset.busy === "1" || !allowed.includes(button.dataset.action);
      }
      const cmd = latest.get(r.robot_id);
      if (cmd && !card.dataset.busy) setText(card.querySelector(".cmd"), "last command: " + cmd.action + " — " + cmd.state + (cmd.message ? " (" + cmd.message + ")" : ""));
      sync(card.querySelector("tbody"), r.topics || [], (t) => t.name, () => {
        const tr = row(["Topic", "Messages", "Rate"]);
        tr.children[1].className = "num"; tr.children[2].className = "num";
        return tr;
      }, (tr, t) => {
        setText(tr.children[0], t.name); setTitle(tr.children[0], t.type ? t.name + " [" + t.type + "]" : t.name);
        setText(tr.children[1], num(t.count));
        setText(tr.children[2], t.rate === null ? "–" : num(t.rate, 1) + " Hz");
      });
    });
  }

  const UPLOAD_LABELS = ["File", "Robot", "State", "Progress", "Bytes", "Rate", "ETA", "Retries", "Started", "Finished", "Stored"];
  function renderUploads(uploads, fleet, states) {
    const robotSelect = document.getElementById("f-robot");
    const wanted = [""].concat(fleet.map((r) => r.robot_id));
    if (filter.robot && !wanted.includes(filter.robot)) wanted.push(filter.robot);
    if (Array.from(robotSelect.options).map((o) => o.value).join("\n") !== wanted.join("\n")) {
      robotSelect.replaceChildren(...wanted.map((id) => new Option(id || "all robots", id)));
      robotSelect.value = filter.robot;
    }
    const stateSelect = document.getElementById("f-state");
    const counts = uploads.counts || {};
    const labels = [""].concat(states);
    if (stateSelect.options.length !== labels.length) stateSelect.replaceChildren(...labels.map((s) => new Option(s || "all states", s)));
    for (const option of stateSelect.options) if (option.value) setText(option, option.value + " (" + (counts[option.value] || 0) + ")");
    stateSelect.value = filter.state;

    const first = uploads.total ? uploads.offset + 1 : 0;
    setText(document.getElementById("p-info"), first + "–" + (uploads.offset + uploads.items.length) + " of " + uploads.total);
    document.getElementById("p-prev").disabled = uploads.offset <= 0;
    document.getElementById("p-next").disabled = uploads.offset + uploads.items.length >= uploads.total;
    setText(document.getElementById("up-count"), "(" + uploads.total + ")");
    document.getElementById("up-empty").hidden = uploads.items.length > 0;

    sync(document.getElementById("up-rows"), uploads.items, (u) => u.key, () => {
      const tr = row(UPLOAD_LABELS);
      for (const i of [4, 5, 6, 7]) tr.children[i].className = "num";
      tr.children[0].className = "file";
      tr.children[0].append(el("span", { class: "bag" }), el("span", { class: "name" }));
      for (const i of [8, 9]) tr.children[i].className = "time";
      tr.children[2].append(el("span", { class: "state" }), el("span", { class: "reason" }));
      tr.children[3].className = "progress-col";
      tr.children[3].append(el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, [el("div", { class: "fill" })]), el("span", { class: "pct" }));
      return tr;
    }, (tr, u) => {
      const c = tr.children;
      tr.dataset.state = u.state;
      // A bag's files share a group: the first row names the bag (its split number ends the name), the
      // others (metadata.yaml) sit indented under it. Names are shown whole, wrapped, never cut.
      const member = u.group && u.group_index > 0;
      tr.classList.toggle("grouped", Boolean(member));
      tr.dataset.group = u.group || "";
      tr.dataset.job = u.job || "";
      setText(c[0].children[0], u.group && !member ? u.group + (u.split !== null && u.split !== undefined ? " (split " + u.split + ")" : "") : "");
      setText(c[0].children[1], (member ? "└ " : "") + (u.filename || "–"));
      setTitle(c[0], u.group ? u.group + "/" + u.filename : u.filename);
      setText(c[1], u.robot_id); setTitle(c[1], u.robot_id);
      setText(c[2].children[0], u.state); c[2].children[0].className = "state " + cls("state-", u.state);
      const reason = u.blocked_reason ? waiting(u.blocked_reason, u.retry_at) : u.reason || "";
      setText(c[2].children[1], reason); setTitle(c[2], reason);
      const pct = u.progress === null || u.progress === undefined ? null : Math.round(u.progress * 1000) / 10;
      const bar = c[3].querySelector(".bar");
      bar.setAttribute("aria-valuenow", pct === null ? "0" : String(pct));
      const fill = bar.firstChild;
      fill.style.width = (pct || 0) + "%";
      fill.className = "fill " + cls("state-", u.state);
      setText(c[3].querySelector(".pct"), pct === null ? "" : pct.toFixed(1) + "%");
      setText(c[4], bytes(u.bytes_done) + " / " + bytes(u.bytes_total));
      setText(c[5], u.state === "uploading" ? rate(u.rate) : "–");
      setText(c[6], u.state === "uploading" ? duration(u.eta) : "–");
      setText(c[7], num(u.retries));
      setText(c[8], clock(u.started_at)); setTitle(c[8], isoTitle(u.started_at));
      setText(c[9], clock(u.finished_at)); setTitle(c[9], isoTitle(u.finished_at));
      const stored = c[10];
      if (u.download && u.upload_id) {
        let link = stored.querySelector("a");
        if (!link) { stored.replaceChildren(); link = el("a", {}, ["download"]); stored.append(el("span"), " ", link); }
        link.setAttribute("href", "/uploads/" + encodeURIComponent(u.upload_id) + "/file");
        setText(stored.firstChild, bytes(u.stored_size) + (u.compression_ratio ? " (" + u.compression_ratio.toFixed(2) + "×)" : ""));
      } else {
        setText(stored, u.state === "finalizing" && u.finalize_progress !== null ? "verifying " + Math.round(u.finalize_progress * 100) + "%" : "–");
      }
    });
  }

  function render(doc) {
    last = doc;
    clockOffset = doc.server_time - Date.now() / 1000;
    renderServer(doc.server);
    renderFleet(doc.fleet);
    renderRecordings(doc.fleet, doc.commands);
    renderUploads(doc.uploads, doc.fleet, doc.upload_states);
  }

  // --- commands -----------------------------------------------------------------------------------
  async function sendCommand(robotId, action, card) {
    card.dataset.busy = "1";
    for (const b of card.querySelectorAll(".actions button")) b.disabled = true;
    setText(card.querySelector(".cmd"), action + ": sending…");
    try {
      const response = await fetch(commandUrl + encodeURIComponent(robotId) + "/commands", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ action: action }),
      });
      const body = await response.json().catch(() => ({}));
      setText(card.querySelector(".cmd"), response.ok
        ? action + ": queued, waiting for the robot…"
        : action + " refused: " + ((body.error && body.error.message) || response.status));
    } catch (err) {
      setText(card.querySelector(".cmd"), action + " failed: " + err);
    } finally {
      delete card.dataset.busy;
      if (last) renderRecordings(last.fleet, []);
    }
  }

  // --- live updates: SSE, backoff, polling fallback -----------------------------------------------
  function query() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v !== "" && v !== null) params.set(k, String(v));
    return params.toString();
  }
  function setConn(state) {
    const badge = document.getElementById("conn");
    badge.dataset.state = state;
    setText(badge, state);
  }
  async function poll() {
    try {
      // live=1: the server's shared per-process snapshot, not a fresh read per viewer.
      const response = await fetch(stateUrl + "?" + query() + "&live=1", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.ok) render(await response.json());
    } catch (err) {
      setConn("reconnecting");
    }
  }
  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(poll, POLL_MS);
    poll();
  }
  function stopPolling() { clearInterval(pollTimer); pollTimer = null; }
  function connect() {
    clearTimeout(reconnectTimer);
    if (source) source.close();
    source = new EventSource(eventsUrl + "?" + query());
    source.addEventListener("state", (event) => {
      backoff = 1000;
      stopPolling();
      setConn("live");
      render(JSON.parse(event.data));
    });
    // The server ends each stream after a while so it never pins a worker; reconnect at once.
    source.addEventListener("bye", () => { source.close(); connect(); });
    // The server has as many streams open as it allows (DASHBOARD_SSE_MAX_STREAMS): poll, try again later.
    source.addEventListener("poll", (event) => {
      source.close();
      let retry = 30;
      try { retry = JSON.parse(event.data).retry_seconds || retry; } catch (err) { /* keep the default */ }
      setConn("polling");
      startPolling();
      reconnectTimer = setTimeout(connect, retry * 1000 * (0.75 + Math.random() / 2));
    });
    source.onerror = () => {
      source.close();
      setConn(pollTimer ? "polling" : "reconnecting");
      startPolling();
      const delay = backoff * (0.5 + Math.random() / 2);
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      reconnectTimer = setTimeout(connect, delay);
    };
  }
  function refilter() {
    poll();
    connect();
  }

  document.getElementById("f-robot").addEventListener("change", (e) => { filter.robot = e.target.value; filter.offset = 0; refilter(); });
  document.getElementById("f-state").addEventListener("change", (e) => { filter.state = e.target.value; filter.offset = 0; refilter(); });
  document.getElementById("p-prev").addEventListener("click", () => { filter.offset = Math.max(0, filter.offset - filter.limit); refilter(); });
  document.getElementById("p-next").addEventListener("click", () => { filter.offset += filter.limit; refilter(); });
  setInterval(() => {
    for (const node of document.querySelectorAll(".seen")) setText(node, ago(Number(node.dataset.ts)));
  }, 1000);

  poll();
  connect();
})();
