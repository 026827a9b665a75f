// Recordings view: the bag catalogue (GET /dashboard/api/bags, the API's own JSON) with filters and a detail panel.
// Everything robots sent is untrusted: it only ever reaches the page through textContent and attributes.
"use strict";
(function () {
  const app = document.getElementById("rec-app");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const listUrl = app.dataset.listUrl;
  const bagUrl = app.dataset.bagUrl;
  const refreshMs = Number(app.dataset.refresh || 3) * 1000;
  const PAGE = 25;
  let offset = 0;
  let selected = null;
  let lastList = "";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children || []) node.append(child);
    return node;
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function time(ns) { return ns ? new Date(ns / 1e6).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–"; }
  function seconds(ns) { return (ns / 1e9).toFixed(1) + " s"; }
  function nanoseconds(local) { return local ? String(BigInt(new Date(local).getTime()) * 1000000n) : ""; }

  function query() {
    const form = document.getElementById("rec-filters");
    const params = new URLSearchParams();
    for (const name of ["robot", "session", "topic", "type", "recovered"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    if (form.elements.topic_prefix.checked) params.set("topic_prefix", "true");
    const since = nanoseconds(form.elements.since.value), until = nanoseconds(form.elements.until.value);
    if (since) params.set("since_ns", since);
    if (until) params.set("until_ns", until);
    params.set("limit", PAGE);
    params.set("offset", offset);
    return params;
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
    return body;
  }

  function row(bag) {
    const topics = bag.topics.map((t) => t.name).join(", ");
    const tr = el("tr", { "data-bag": bag.bag_id, tabindex: "0", "aria-selected": String(bag.bag_id === selected) }, [
      el("td", { class: "name", "data-label": "Bag", title: bag.name }, [bag.name + (bag.recovered ? " (recovered)" : "")]),
      el("td", { "data-label": "Robot" }, [bag.robot_id]),
      el("td", { "data-label": "Start" }, [time(bag.start_ns)]),
      el("td", { class: "num", "data-label": "Duration" }, [seconds(bag.duration_ns)]),
      el("td", { class: "num", "data-label": "Messages" }, [String(bag.message_count)]),
      el("td", { class: "num", "data-label": "Size" }, [bytes(bag.size)]),
      el("td", { class: "topics-cell", "data-label": "Topics", title: topics }, [topics]),
    ]);
    tr.addEventListener("click", () => show(bag.bag_id));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") show(bag.bag_id); });
    return tr;
  }

  async function refresh() {
    let page;
    try { page = await getJson(listUrl + "?" + query()); } catch (err) { document.getElementById("r-info").textContent = String(err.message); return; }
    const text = JSON.stringify(page);
    if (text === lastList) return;  // nothing new: keep the rows (and the focus) as they are
    lastList = text;
    document.getElementById("bag-rows").replaceChildren(...page.bags.map(row));
    document.getElementById("bag-empty").hidden = page.bags.length > 0;
    const last = Math.min(page.offset + page.bags.length, page.total);
    document.getElementById("r-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 of 0";
    document.getElementById("r-prev").disabled = page.offset === 0;
    document.getElementById("r-next").disabled = last >= page.total;
  }

  function meta(pairs) {
    const nodes = [];
    for (const [k, v] of pairs) nodes.push(el("dt", {}, [k]), el("dd", {}, [String(v)]));
    return nodes;
  }

  async function show(bagId) {
    let bag;
    try { bag = await getJson(bagUrl + encodeURIComponent(bagId)); } catch (err) { return; }
    selected = bagId;
    for (const tr of document.querySelectorAll("#bag-rows tr")) tr.setAttribute("aria-selected", String(tr.dataset.bag === bagId));
    document.getElementById("d-name").textContent = bag.name;
    document.getElementById("d-meta").replaceChildren(...meta([
      ["Robot", bag.robot_id], ["Session", bag.session || "–"], ["Split", bag.split_index], ["Storage", bag.storage || "–"],
      ["Start", time(bag.start_ns)], ["End", time(bag.end_ns)], ["Duration", seconds(bag.duration_ns)],
      ["Messages", bag.message_count], ["Size", bytes(bag.size)], ["Stored", bytes(bag.stored_size)],
      ["Recovered", bag.recovered ? "yes (salvaged after a crash)" : "no"], ["Bag id", bag.bag_id],
    ]));
    document.getElementById("d-topics").replaceChildren(...bag.topics.map((t) => el("tr", {}, [
      el("td", { "data-label": "Topic", title: t.name }, [t.name]),
      el("td", { "data-label": "Type", title: t.type }, [t.type]),
      el("td", { class: "num", "data-label": "Messages" }, [String(t.message_count)]),
    ])));
    document.getElementById("d-files").replaceChildren(...bag.files.map((f) => el("li", {}, [
      `${f.filename} · ${f.kind} · ${bytes(f.size)}${f.parsed ? "" : " · contents not readable"}`,
    ])));
    document.getElementById("d-download").setAttribute("href", bagUrl + encodeURIComponent(bagId) + "/download");
    document.getElementById("bag-detail").hidden = false;
    foxglove(bagId, bag.files.some((f) => f.filename.endsWith(".mcap")));
  }

  // Open in Foxglove: a short-lived signed link to the MCAP file (no key in it), asked for when a bag is opened.
  async function foxglove(bagId, hasMcap) {
    const link = document.getElementById("d-foxglove");
    link.hidden = true;
    if (!hasMcap) return;
    const response = await fetch(bagUrl + encodeURIComponent(bagId) + "/links", {
      method: "POST", headers: { "X-CSRF-Token": csrf, Accept: "application/json" }, credentials: "same-origin",
    });
    if (!response.ok || selected !== bagId) return;
    const body = await response.json();
    const mcap = body.files.find((f) => f.foxglove);
    if (!mcap) return;
    link.setAttribute("href", mcap.foxglove);
    link.setAttribute("title", "Valid until " + new Date(body.expires * 1000).toISOString());
    link.hidden = false;
  }

  async function remove() {
    if (!selected) return;
    const name = document.getElementById("d-name").textContent;
    if (!window.confirm(`Delete bag ${name} and all its files on the server? This cannot be undone.`)) return;
    const response = await fetch(bagUrl + encodeURIComponent(selected) + "/delete", {
      method: "POST", headers: { "X-CSRF-Token": csrf, Accept: "application/json" }, credentials: "same-origin",
    });
    if (!response.ok) { window.alert("Delete failed: " + response.status); return; }
    selected = null;
    document.getElementById("bag-detail").hidden = true;
    lastList = "";
    refresh();
  }

  document.getElementById("rec-filters").addEventListener("input", () => { offset = 0; lastList = ""; refresh(); });
  document.getElementById("rec-filters").addEventListener("submit", (e) => e.preventDefault());
  document.getElementById("r-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
  document.getElementById("r-next").addEventListener("click", () => { offset += PAGE; refresh(); });
  const del = document.getElementById("d-delete");
  if (del) del.addEventListener("click", remove);
  refresh();
  window.setInterval(refresh, refreshMs);  // live: a bag appears once its last file is verified
})();
