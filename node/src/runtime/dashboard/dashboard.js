// The Shoal dashboard: plain JS, no build step. Every figure comes from /api/state (the
// node's state API, asked of every peer). Text from the mesh is set with textContent only.
"use strict";

const WINDOW_MS = 60000;
const $ = (sel) => document.querySelector(sel);

async function api(kind, extra) {
  const r = await fetch(`/api/state?kind=${kind}${extra || ""}`, { cache: "no-store" });
  if (!r.ok) throw new Error(`${kind}: ${r.status} ${await r.text()}`);
  return r.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(table, rows, build) {
  const body = $(`${table} tbody`);
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    build(tr, r);
    body.appendChild(tr);
  }
}

const short = (s, n) => (s ? s.slice(0, n || 16) : "-");
const mib = (b) => (b / 1048576).toFixed(1) + " MiB";

// "CPU=2, gpu=1" into {CPU: 2, gpu: 1}.
function resources(s) {
  const out = {};
  for (const part of (s || "").split(",")) {
    const [k, v] = part.trim().split("=");
    if (k && v !== undefined) out[k] = Number(v);
  }
  return out;
}

function renderPeers(reply) {
  fill("#peers", reply.rows, (tr, p) => {
    tr.dataset.peer = p.node;
    cell(tr, short(p.node, 20), "id");
    cell(tr, p.target);
    const total = resources(p.total), free = resources(p.free);
    cell(tr, `${free.CPU || 0}/${total.CPU || 0}`, "num");
    cell(tr, Object.keys(total).filter((k) => k !== "CPU").map((k) => `${k}=${free[k] || 0}/${total[k]}`).join(" "));
    cell(tr, p.queued, "num");
    cell(tr, p.running, "num");
    cell(tr, p.tasks_per_s, "num");
    cell(tr, p.finished, "num");
    cell(tr, `${mib(p.store_used)} / ${mib(p.store_capacity)}`, "num");
    cell(tr, mib(p.spilled_bytes), "num");
    cell(tr, p.workers, "num");
    cell(tr, p.actors, "num");
  });
}

function colour(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 50%)`;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.appendChild(el);
  return el;
}

function renderStream(reply) {
  const now = Date.now();
  const from = now - WINDOW_MS;
  const tasks = reply.rows.filter((t) => t.started_at_ms && (t.ended_at_ms || now) >= from);
  const lanes = [...new Set(tasks.map((t) => `${t.node}:${t.worker_pid}`))].sort();
  const stream = $("#stream");
  stream.replaceChildren();
  const left = 190, width = Number(stream.getAttribute("width")) - left - 10, lane = 16;
  stream.setAttribute("height", String(lanes.length * lane + 20));
  const x = (ms) => left + Math.max(0, (ms - from) / WINDOW_MS) * width;
  lanes.forEach((l, i) => {
    const [node, pid] = l.split(":");
    const t = svg("text", { x: 0, y: i * lane + 12 }, stream);
    t.textContent = `${short(node, 12)} pid ${pid}`;
  });
  const counts = {};
  for (const t of tasks) {
    const y = lanes.indexOf(`${t.node}:${t.worker_pid}`) * lane + 2;
    const end = t.ended_at_ms || now;
    const ready = t.ready_at_ms || t.arrived_at_ms;
    const g = svg("g", { class: "task" }, stream);
    g.dataset.task = t.task_id;
    g.dataset.function = t.function;
    g.dataset.node = t.node;
    g.dataset.state = t.state;
    const part = (cls, a, b, fillColour) => {
      if (b < from || b < a) return;
      const attrs = { class: cls, x: x(a), y, width: Math.max(1, x(b) - x(a)), height: lane - 4 };
      if (fillColour) attrs.fill = fillColour;
      svg("rect", attrs, g);
    };
    part("fetch", t.arrived_at_ms, ready);
    part("wait", ready, t.started_at_ms);
    part("compute", t.started_at_ms, end, colour(t.function));
    const title = svg("title", {}, g);
    title.textContent = `${t.function} ${t.state} on ${short(t.node, 12)} (task ${short(t.task_id)}): ` +
      `fetch ${ready - t.arrived_at_ms} ms, wait ${t.started_at_ms - ready} ms, run ${end - t.started_at_ms} ms`;
    counts[t.function] = (counts[t.function] || 0) + 1;
  }
  fill("#functions", Object.entries(counts).sort(), (tr, [f, n]) => {
    const td = cell(tr, f);
    td.style.color = colour(f);
    cell(tr, n, "num");
  });
}

function renderActors(reply) {
  fill("#actors", reply.rows, (tr, a) => {
    tr.dataset.actor = a.actor_id;
    cell(tr, short(a.actor_id), "id");
    cell(tr, a.class);
    cell(tr, a.name);
    cell(tr, a.state);
    cell(tr, short(a.node, 12), "id");
    cell(tr, a.pid, "num");
    cell(tr, a.calls_done, "num");
    cell(tr, a.calls_pending, "num");
    cell(tr, a.reason);
  });
}

function renderObjects(reply) {
  fill("#objects", reply.rows, (tr, o) => {
    tr.dataset.object = o.object_id;
    cell(tr, short(o.object_id), "id");
    cell(tr, short(o.node, 12), "id");
    cell(tr, o.size, "num");
    cell(tr, o.location);
    cell(tr, o.holders, "num");
    cell(tr, (o.pinned_by || []).join(", "));
  });
}

function renderLogs(reply) {
  const box = $("#logs");
  box.replaceChildren();
  for (const l of reply.rows) {
    const div = document.createElement("div");
    div.className = "line";
    const what = l.function ? l.function.split("::").pop() : "worker";
    div.textContent = `(${what} pid=${l.pid} peer=${short(l.node, 16)}) ${l.text}`;
    box.appendChild(div);
  }
}

async function refresh() {
  try {
    const [peers, tasks, actors, objects, logs] = await Promise.all([
      api("peers"),
      api("tasks", "&limit=2000"),
      api("actors", "&limit=500"),
      api("objects", "&limit=500"),
      api("logs", "&limit=200"),
    ]);
    renderPeers(peers);
    renderStream(tasks);
    renderActors(actors);
    renderObjects(objects);
    renderLogs(logs);
    const missing = [...new Set([peers, tasks, actors, objects, logs].flatMap((r) => r.missing))];
    $("#banner").textContent = missing.length
      ? `Partial: ${missing.length} peer(s) did not answer in time: ${missing.join(", ")}` : "";
    $("#error").textContent = "";
    $("#updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
  } catch (e) {
    $("#error").textContent = String(e);
  }
}

$("#window").textContent = String(WINDOW_MS / 1000);
refresh();
setInterval(refresh, 2000);
