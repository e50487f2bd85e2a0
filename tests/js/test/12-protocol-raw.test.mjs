// 12. wire-level checks with a bare `ws` client and fetch (no phoenix.js), so that failures
//     show the exact frames / HTTP bodies.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, waitFor, WebSocket} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

/** Opens a raw V2 websocket; returns {ws, frames, send(frame), reply(ref)}. */
async function rawSocket(t, query){
  const ws = new WebSocket(`${server.url}/websocket?${query}`)
  const frames = []
  ws.on("message", data => frames.push(JSON.parse(data.toString())))
  t.after(() => ws.terminate())
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject) })
  return {
    ws, frames,
    send(frame){ ws.send(JSON.stringify(frame)) },
    reply(ref, ms = 5000){
      return waitFor(() => frames.find(f => f[1] === ref && f[3] === "phx_reply"), ms,
        () => `phx_reply with ref ${ref}; frames: ${JSON.stringify(frames)}`)
    },
  }
}

test("heartbeat, join, unmatched topic, join error and leave frames", {timeout: 30_000}, async t => {
  const token = server.token({sub: "alice"})
  const s = await rawSocket(t, `token=${encodeURIComponent(token)}&vsn=2.0.0`)

  s.send([null, "1", "phoenix", "heartbeat", {}])
  assert.deepEqual(await s.reply("1"), [null, "1", "phoenix", "phx_reply", {status: "ok", response: {}}])

  s.send(["2", "2", "chat:room:12", "phx_join", {}])
  const joined = await s.reply("2")
  assert.equal(joined[0], "2", "reply carries the join_ref")
  assert.equal(joined[2], "chat:room:12")
  assert.equal(joined[4].status, "ok")
  assert.equal(typeof joined[4].response, "object")

  s.send([null, "3", "chat:room:unjoined", "new_message", {content: "x"}])
  const unmatched = await s.reply("3")
  assert.deepEqual(unmatched[4], {status: "error", response: {reason: "unmatched topic"}})
  assert.equal(unmatched[2], "chat:room:unjoined")

  s.send(["4", "4", "user:bob", "phx_join", {}])
  const denied = await s.reply("4")
  assert.equal(denied[4].status, "error")
  assert.equal(typeof denied[4].response.reason, "string", JSON.stringify(denied))

  s.send(["2", "5", "chat:room:12", "new_message", {content: "raw"}])
  const pushed = await s.reply("5")
  assert.equal(pushed[0], "2")
  assert.equal(pushed[4].status, "ok")
  assert.equal(typeof pushed[4].response.id, "string")
  const bcast = await waitFor(() => s.frames.find(f => f[3] === "new_message" && f[4].id === pushed[4].response.id), 5000, "own broadcast")
  assert.equal(bcast[0], null)
  assert.equal(bcast[1], null)

  s.send(["2", "6", "chat:room:12", "phx_leave", {}])
  const left = await s.reply("6")
  assert.equal(left[4].status, "ok", JSON.stringify(left))
})

test("duplicate phx_join on one socket: phx_close for the old join_ref, ok for the new", {timeout: 30_000}, async t => {
  const s = await rawSocket(t, `token=${encodeURIComponent(server.token({sub: "alice"}))}&vsn=2.0.0`)
  s.send(["1", "1", "chat:room:13", "phx_join", {}])
  assert.equal((await s.reply("1"))[4].status, "ok")
  s.send(["2", "2", "chat:room:13", "phx_join", {}])
  assert.equal((await s.reply("2"))[4].status, "ok")
  const close = await waitFor(() => s.frames.find(f => f[3] === "phx_close"), 5000, () => `phx_close; frames: ${JSON.stringify(s.frames)}`)
  assert.equal(close[0], "1")
  assert.equal(close[2], "chat:room:13")
})

test("websocket upgrade without a valid token is refused", {timeout: 30_000}, async () => {
  for(const query of ["vsn=2.0.0", "token=garbage&vsn=2.0.0"]){
    const ws = new WebSocket(`${server.url}/websocket?${query}`)
    const outcome = await new Promise(resolve => {
      ws.once("open", () => { ws.terminate(); resolve("open") })
      ws.once("unexpected-response", (req, res) => { resolve(`http ${res.statusCode}`); ws.terminate() })
      ws.once("error", e => resolve(`error ${e.message}`))
    })
    assert.notEqual(outcome, "open", `upgrade with ?${query} must fail`)
  }
})

test("long-poll endpoint speaks Phoenix's JSON status protocol", {timeout: 30_000}, async () => {
  const base = `${server.httpUrl}/socket/longpoll`
  const token = server.token({sub: "alice"})
  const get = async (q, headers = {}) => {
    const r = await fetch(`${base}?${q}`, {headers: {Accept: "application/json", ...headers}})
    const text = await r.text()
    let body
    try { body = JSON.parse(text) } catch { assert.fail(`GET ?${q} → HTTP ${r.status}, body is not JSON: ${text}`) }
    return {http: r.status, body}
  }
  const post = async (q, text) => {
    const r = await fetch(`${base}?${q}`, {method: "POST", headers: {"Content-Type": "application/x-ndjson"}, body: text})
    const t = await r.text()
    let body
    try { body = JSON.parse(t) } catch { assert.fail(`POST ?${q} → HTTP ${r.status}, body is not JSON: ${t}`) }
    return {http: r.status, body}
  }

  // new session: exactly what phoenix.js sends first (note the trailing "&" from token=null)
  const created = await get(`token=${token}&vsn=2.0.0&`)
  assert.equal(created.http, 200)
  assert.equal(created.body.status, 410, JSON.stringify(created.body))
  assert.equal(typeof created.body.token, "string")
  const session = created.body.token

  // phoenix.js keeps the user's params and appends the session token: token=USER&vsn=2.0.0&token=SESSION
  const q = `token=${token}&vsn=2.0.0&token=${encodeURIComponent(session)}`
  const sent = await post(q, [
    JSON.stringify(["1", "1", "chat:room:14", "phx_join", {}]),
    JSON.stringify(["1", "2", "chat:room:14", "new_message", {content: "lp raw"}]),
  ].join("\n"))
  assert.deepEqual(sent.body, {status: 200})

  const deadline = Date.now() + 10_000
  const frames = []
  while(Date.now() < deadline && !frames.some(f => f[1] === "2")){
    const polled = await get(q)
    assert.ok([200, 204].includes(polled.body.status), `poll status: ${JSON.stringify(polled.body)}`)
    assert.equal(polled.body.token, session, "poll answers carry the session token")
    if(polled.body.status === 200){
      assert.ok(Array.isArray(polled.body.messages))
      for(const m of polled.body.messages){
        assert.equal(typeof m, "string", `messages are JSON-encoded frames (strings), as phoenix.js JSON.parses each: ${JSON.stringify(m)}`)
        frames.push(JSON.parse(m))
      }
    }
  }
  const joinReply = frames.find(f => f[1] === "1")
  assert.equal(joinReply?.[4]?.status, "ok", JSON.stringify(frames))
  const pushReply = frames.find(f => f[1] === "2")
  assert.equal(pushReply?.[4]?.status, "ok", JSON.stringify(frames))

  // unknown session on POST → 410; bad credentials on GET → 403
  assert.equal((await post("token=nope&vsn=2.0.0", JSON.stringify([null, "1", "phoenix", "heartbeat", {}]))).body.status, 410)
  assert.equal((await get("token=garbage&vsn=2.0.0&")).body.status, 403)
  assert.equal((await get("vsn=2.0.0&")).body.status, 403)
  // X-Phoenix-AuthToken header instead of the token param
  assert.equal((await get("vsn=2.0.0&", {"X-Phoenix-AuthToken": token})).body.status, 410)
})
