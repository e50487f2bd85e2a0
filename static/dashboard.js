// The Armoricore operations page (docs/dashboard.md): joins admin:dashboard with
// the admin token the page was served with, draws every `snapshot` push, and
// sends the operator's actions on the same channel. No build step, no CDN.
import {Socket} from "/assets/phoenix.mjs"

const TOPIC = "admin:dashboard"
let token = document.querySelector('meta[name="armoricore-token"]').content

// ---- small DOM helpers (text is always set as text: topic names and user ids
// come from clients) ----
function h(tag, attrs = {}, ...children){
  const el = document.createElement(tag)
  for(const [k, v] of Object.entries(attrs)){
    if(v === null || v === undefined || v === false){ continue }
    if(k === "class"){ el.className = v } else if(k.startsWith("data-") || k === "title" || k === "max" || k === "value"){ el.setAttribute(k, v) } else { el[k] = v }
  }
  for(const c of children.flat()){
    if(c === null || c === undefined){ continue }
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}
const $ = (sel, root = document) => root.querySelector(sel)
function body(id){ return $(`#${id} [data-body]`) }
function fill(id, ...children){ body(id).replaceChildren(...children.filter(c => c !== null && c !== undefined)) }
function table(headers, rows, empty = "Nothing here."){
  if(rows.length === 0){ return h("p", {class: "muted"}, empty) }
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map(x => h("th", {class: x.num ? "num" : ""}, x.label ?? x)))), h("tbody", {}, rows))
}
const num = (v, digits = 0) => v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, {maximumFractionDigits: digits})
function duration(s){
  s = Math.floor(s)
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60)
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`
}
const state = (up) => h("span", {class: up ? "up" : "down"}, up ? "up" : "down")
function toast(text, bad = false){
  const t = $("#toast")
  t.textContent = text
  t.style.color = bad ? "var(--bad)" : ""
}

// ---- the socket ----
// The token goes as phoenix.js's authToken (a WebSocket subprotocol), never in a
// URL that proxies and access logs keep; read again at every (re)connect.
const socket = new Socket("/socket", {authToken: () => token, heartbeatIntervalMs: 15000})
const live = $("#live")
socket.onOpen(() => { live.textContent = "live"; live.className = "meta on" })
socket.onClose(() => { live.textContent = "offline, reconnecting…"; live.className = "meta off" })
socket.connect()
const channel = socket.channel(TOPIC, {})
channel.join()
  .receive("ok", info => { $("#node-name").textContent = info.node; $("#node-version").textContent = info.version })
  .receive("error", e => toast(`join refused: ${e.reason}`, true))
channel.on("snapshot", render)

// The token expires (dashboard.token_ttl_s): fetch a new one halfway through its
// life (at most every 10 minutes), for the next reconnect.
function refreshIn(){
  const exp = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp
  const half = (exp * 1000 - Date.now()) / 2
  return Math.min(Math.max(half, 5000), 10 * 60 * 1000)
}
async function refresh(){
  try {
    const r = await fetch("/dashboard/token", {credentials: "same-origin", cache: "no-store"})
    if(r.ok){ token = (await r.json()).token }
  } catch { /* offline: try again soon */ }
  setTimeout(refresh, refreshIn())
}
setTimeout(refresh, refreshIn())

function push(event, payload){
  return new Promise(resolve => {
    channel.push(event, payload, 10000)
      .receive("ok", r => resolve({ok: true, r}))
      .receive("error", r => resolve({ok: false, r}))
      .receive("timeout", () => resolve({ok: false, r: {reason: "timeout"}}))
  })
}
async function act(label, event, payload){
  const {ok, r} = await push(event, payload)
  toast(ok ? `${label}: ${JSON.stringify(r)}` : `${label} failed: ${r.reason}`, !ok)
  return ok
}

// ---- rendering ----
window.dashboard = {snapshots: 0, last: null}

function render(s){
  window.dashboard.snapshots += 1
  window.dashboard.last = s
  $("#node-name").textContent = s.node.id
  $("#node-version").textContent = s.node.version
  $("#node-uptime").textContent = duration(s.node.uptime_s)
  charts(s.series)
  nodes(s.nodes)
  services(s.services)
  clients(s.clients)
  topics(s.topics)
  tree(s.tree)
  jobs(s.jobs)
  calls(s.calls)
}

function charts(series){
  for(const chart of document.querySelectorAll(".chart")){
    const key = chart.dataset.series
    const values = series.map(p => p[key])
    const last = values.length ? values[values.length - 1] : null
    $(".value", chart).textContent = num(last, 1)
    const max = Math.max(1, ...values)
    const n = Math.max(values.length - 1, 1)
    const points = values.map((v, i) => `${(i / n * 120).toFixed(1)},${(46 - v / max * 44).toFixed(1)}`).join(" ")
    $("polyline", chart).setAttribute("points", points)
  }
}

function nodeState(n, s){
  if(!n.alive){ return h("span", {class: "down"}, `silent ${num(n.last_seen_ms / 1000, 0)} s`) }
  if(s.ready === false){ return h("span", {class: "down"}, "stopping") }
  if(s.bus && !s.bus.up){ return h("span", {class: "down"}, `bus (${s.bus.kind}) down`) }
  return state(true)
}

function nodes(list){
  fill("nodes", table(
    ["node", "state", {label: "conns", num: true}, {label: "msg in/s", num: true}, {label: "msg out/s", num: true}, "up"],
    list.map(n => {
      const s = n.summary || {}
      const rates = s.rates || {}
      return h("tr", {"data-node": n.id},
        h("td", {class: "wrap"}, n.id, n.self ? h("span", {class: "badge"}, "this node") : null),
        h("td", {}, nodeState(n, s)),
        h("td", {class: "num"}, num(s.connections)),
        h("td", {class: "num"}, num(rates.messages_in_per_s, 1)),
        h("td", {class: "num"}, num(rates.messages_out_per_s, 1)),
        h("td", {}, s.uptime_s === undefined ? "–" : duration(s.uptime_s)))
    })))
}

function services(s){
  const rows = [
    h("tr", {}, h("td", {}, `bus (${s.bus.kind})`), h("td", {}, state(s.bus.up)),
      h("td", {class: "wrap muted"}, `reconnects ${s.bus.reconnects}, dead letters ${s.bus.dead_letters}, pending ${Object.entries(s.bus.pending).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(", ") || "0"}`)),
    h("tr", {}, h("td", {}, "redis"), h("td", {}, s.redis ? state(s.redis.up) : h("span", {class: "muted"}, "not used")),
      h("td", {class: "wrap muted"}, s.redis ? `${s.redis.nodes} nodes, reconnects ${s.redis.reconnects}, dropped ${s.redis.dropped}` : "single node")),
    h("tr", {}, h("td", {}, s.database ? `database (${s.database.kind})` : "database"), h("td", {}, s.database ? state(s.database.up) : h("span", {class: "muted"}, "off")), h("td", {})),
  ]
  for(const [name, p] of Object.entries(s.notifications || {})){
    rows.push(h("tr", {}, h("td", {}, `push: ${name}`), h("td", {}, state(p.up)), h("td", {class: "wrap muted"}, p.reason || "")))
  }
  if(s.ai){ rows.push(h("tr", {}, h("td", {}, "ai"), h("td", {}, state(true)), h("td", {class: "muted"}, s.ai.join(", ")))) }
  fill("services", table(["link", "state", ""], rows))
}

function clients(c){
  fill("clients",
    h("p", {class: "muted"}, `${num(c.connections)} connections, ${num(c.users)} users on this node`),
    table(["user", {label: "conns", num: true}, "transport", ""],
      c.top.map(u => h("tr", {"data-user": u.user_id},
        h("td", {class: "wrap"}, u.user_id),
        h("td", {class: "num"}, num(u.connections)),
        h("td", {}, u.transports.join(", ")),
        h("td", {}, h("button", {class: "danger", "data-action": "disconnect", "data-user-id": u.user_id}, "Disconnect")))),
      "No connections."))
}

function topics(t){
  fill("topics",
    h("p", {class: "muted"}, `${num(t.count)} topics with subscribers on this node`),
    table(["topic", {label: "subscribers", num: true}, {label: "msg/s", num: true}, ""],
      t.busiest.map(x => h("tr", {"data-topic": x.topic},
        h("td", {class: "wrap"}, x.topic),
        h("td", {class: "num"}, num(x.subscribers)),
        h("td", {class: "num"}, num(x.broadcasts_per_s, 1)),
        h("td", {}, h("button", {"data-action": "presence", "data-topic": x.topic}, "Presence")))),
      "No topics."))
}

function tree(t){
  const children = t.children.map(c => h("li", {"data-actor": c.name},
    h("b", {}, c.name),
    h("span", {class: "badge"}, c.status),
    c.restarts ? h("span", {class: "badge bad"}, `restarted ${c.restarts}×`) : h("span", {class: "badge"}, "0 restarts"),
    c.children ? h("span", {class: "badge"}, `${num(c.children)} ${c.children === 1 ? "child" : "children"}`) : null,
    c.child_failures ? h("span", {class: "badge bad"}, `${c.child_failures} child failures`) : null,
    h("span", {class: "muted"}, ` ${c.kind}`)))
  fill("tree", h("ul", {class: "tree"}, h("li", {},
    h("b", {}, "root"), h("span", {class: "badge"}, t.strategy),
    h("span", {class: t.restarts ? "badge bad" : "badge"}, `${t.restarts} restarts (max ${t.max_restarts} in ${t.window_ms / 1000} s)`),
    h("ul", {}, children))))
}

function jobRow(j, actions){
  const p = j.progress
  return h("tr", {"data-job": j.id ?? j.subject_id, "data-status": j.status},
    h("td", {}, j.kind),
    h("td", {class: "wrap"}, j.subject_id ?? "–"),
    h("td", {}, j.status),
    h("td", {}, j.status === "running"
      ? h("span", {}, h("progress", {max: "100", value: String(p ? p.percent : 0), "data-progress": j.subject_id}), ` ${p ? num(p.percent, 1) : 0}%`, p ? h("span", {class: "muted"}, ` ${p.stage}${p.speed ? `, ${num(p.speed, 1)}×` : ""}${p.eta_s ? `, ${num(p.eta_s)} s left` : ""}`) : null)
      : ""),
    h("td", {class: "wrap error"}, j.error ?? ""),
    h("td", {class: "num"}, num(j.attempts)),
    h("td", {class: "wrap muted"}, j.node ?? ""),
    h("td", {}, actions))
}

function jobs(j){
  const rows = []
  for(const key of ["running", "queued", "retrying"]){
    for(const job of j[key] || []){
      const cancellable = job.kind === "media.uploaded"
      rows.push(jobRow(job, cancellable ? h("button", {class: "danger", "data-action": "cancel", "data-job-id": job.id ?? "", "data-media-id": job.subject_id}, "Cancel") : null))
    }
  }
  for(const job of j.failed || []){
    rows.push(jobRow(job, job.id ? h("button", {"data-action": "retry", "data-job-id": job.id}, "Retry") : null))
  }
  for(const job of (j.done || []).slice(0, 5)){ rows.push(jobRow(job, null)) }
  const counts = ["running", "queued", "retrying", "failed"].map(k => `${(j[k] || []).length} ${k}`).join(", ")
  fill("jobs",
    h("p", {class: "muted"}, j.recorded ? `${counts} (media, notifications, AI; newest first)` : `${counts} — database off: this node's transcodes only`),
    j.error ? h("p", {class: "down"}, j.error) : null,
    table(["kind", "subject", "status", "progress", "error", {label: "tries", num: true}, "node", ""], rows, "No jobs."))
}

function calls(list){
  if(list === null){ fill("calls", h("p", {class: "muted"}, "Calls are off on this node.")); return }
  const rows = []
  for(const call of list){
    for(const p of call.participants){
      rows.push(h("tr", {"data-call": call.id},
        h("td", {class: "wrap"}, call.id), h("td", {class: "wrap"}, p.user_id), h("td", {}, p.transport),
        h("td", {class: "num"}, num(p.tracks)), h("td", {class: "num"}, num(p.kbps_in, 1)), h("td", {class: "num"}, num(p.kbps_out, 1))))
    }
    if(call.participants.length === 0){ rows.push(h("tr", {"data-call": call.id}, h("td", {}, call.id), h("td", {class: "muted"}, "empty"))) }
  }
  fill("calls", table(["call", "user", "transport", {label: "tracks", num: true}, {label: "kbit/s in", num: true}, {label: "kbit/s out", num: true}], rows, "No calls."))
}

// ---- actions ----
async function showPresence(topic){
  $("#presence-form [name=topic]").value = topic
  const {ok, r} = await push("presence", {topic})
  if(!ok){ toast(`presence failed: ${r.reason}`, true); return }
  const rows = Object.entries(r.presences).map(([key, {metas}]) => h("tr", {"data-presence": key},
    h("td", {class: "wrap"}, key), h("td", {class: "num"}, num(metas.length)),
    h("td", {class: "wrap"}, h("pre", {}, JSON.stringify(metas.map(({phx_ref, ...m}) => m))))))
  fill("presence", h("p", {class: "muted"}, topic), table(["key", {label: "metas", num: true}, ""], rows, "Nobody is present."))
}

document.addEventListener("click", async e => {
  const b = e.target.closest("button[data-action]")
  if(!b){ return }
  const d = b.dataset
  if(d.action === "disconnect"){ await act(`disconnect ${d.userId}`, "disconnect", {user_id: d.userId}) }
  if(d.action === "presence"){ await showPresence(d.topic) }
  if(d.action === "cancel"){
    b.disabled = true
    await act(`cancel ${d.mediaId}`, "cancel_job", d.jobId ? {job_id: d.jobId} : {media_id: d.mediaId})
  }
  if(d.action === "retry"){ b.disabled = true; await act(`retry ${d.jobId}`, "retry_job", {job_id: d.jobId}) }
})

$("#disconnect-form").addEventListener("submit", async e => {
  e.preventDefault()
  const user_id = e.target.user_id.value.trim()
  if(await act(`disconnect ${user_id}`, "disconnect", {user_id})){ e.target.reset() }
})
$("#presence-form").addEventListener("submit", e => { e.preventDefault(); showPresence(e.target.topic.value.trim()) })
$("#broadcast-form").addEventListener("submit", async e => {
  e.preventDefault()
  const f = e.target
  let payload = {}
  if(f.payload.value.trim()){
    try { payload = JSON.parse(f.payload.value) } catch(err){ toast(`payload is not JSON: ${err.message}`, true); return }
  }
  await act(`broadcast to ${f.topic.value}`, "broadcast", {topic: f.topic.value.trim(), event: f.event.value.trim(), payload})
})
