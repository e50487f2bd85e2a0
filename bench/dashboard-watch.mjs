// A dashboard page without the page: fetches /dashboard/token with the password,
// joins admin:dashboard over a raw WebSocket (Phoenix V2 frames) and counts the
// `snapshot` pushes until SIGTERM, then prints one JSON line:
// {snapshots, bytes_mean, bytes_max, interval_ms_p50, interval_ms_max}.
// Usage: node bench/dashboard-watch.mjs http://127.0.0.1:PORT PASSWORD
import {createRequire} from "node:module"
const require = createRequire(new URL("../tests/js/package.json", import.meta.url))
const WebSocket = require("ws")

const [base, password] = process.argv.slice(2)
const auth = "Basic " + Buffer.from(`bench:${password}`).toString("base64")
const r = await fetch(`${base}/dashboard/token`, {headers: {authorization: auth}})
if(!r.ok){ console.error(`token: ${r.status} ${await r.text()}`); process.exit(1) }
const {token} = await r.json()
const ws = new WebSocket(`${base.replace("http", "ws")}/socket/websocket?vsn=2.0.0&token=${token}`)
const sizes = [], arrivals = []
ws.on("open", () => {
  ws.send(JSON.stringify(["1", "1", "admin:dashboard", "phx_join", {}]))
  setInterval(() => ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}])), 20000)
})
ws.on("message", data => {
  const text = data.toString()
  if(text.includes('"snapshot"')){ sizes.push(text.length); arrivals.push(Date.now()) }
})
ws.on("error", e => { console.error(`socket: ${e.message}`); process.exit(1) })
process.on("SIGTERM", () => {
  const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]).sort((a, b) => a - b)
  console.log(JSON.stringify({
    snapshots: sizes.length,
    bytes_mean: sizes.length ? Math.round(sizes.reduce((a, b) => a + b, 0) / sizes.length) : 0,
    bytes_max: Math.max(0, ...sizes),
    interval_ms_p50: gaps.length ? gaps[Math.floor(gaps.length / 2)] : null,
    interval_ms_max: gaps.length ? gaps[gaps.length - 1] : null,
  }))
  process.exit(0)
})
