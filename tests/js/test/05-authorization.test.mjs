// 5. authorization: private user:<sub> topics and the `channels` claim.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, waitFor} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("user:<sub> can only be joined by its owner", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice"})})
  await join(alice.channel("user:alice"))

  const other = alice.channel("user:bob")
  const resp = await join(other, "error")
  assert.equal(typeof resp?.reason, "string", `join error response carries a reason: ${JSON.stringify(resp)}`)
  // the error reply frame has the Phoenix shape {status: "error", response: {reason}}
  const frame = alice.frames.find(f => f.topic === "user:bob" && f.event === "phx_reply")
  assert.equal(frame.payload.status, "error")
  assert.deepEqual(Object.keys(frame.payload).sort(), ["response", "status"])
  other.leave() // stop phoenix.js from retrying the join
})

test("a token restricted to chat:room:1 may join it but not chat:room:2", {timeout: 30_000}, async t => {
  const token = server.token({sub: "carol", channels: "chat:room:1"})
  const carol = openSocket(t, server, {token})
  await join(carol.channel("chat:room:1"))
  const denied = carol.channel("chat:room:2")
  const resp = await join(denied, "error")
  assert.equal(typeof resp?.reason, "string", `join error response: ${JSON.stringify(resp)}`)
  denied.leave()
})

test("a wildcard channels claim allows matching topics only", {timeout: 30_000}, async t => {
  const token = server.token({sub: "dave", channels: "chat:room:*"})
  const dave = openSocket(t, server, {token})
  await join(dave.channel("chat:room:42"))
  const denied = dave.channel("comments:stream:1")
  await join(denied, "error")
  denied.leave()
})

test("a socket with an invalid token never opens", {timeout: 30_000}, async t => {
  for(const params of [{token: "not-a-jwt"}, {}]){
    let opened = false
    let errors = 0
    const s = openSocket(t, server, {params, reconnectAfterMs: () => 10_000})
    s.onOpen(() => { opened = true })
    s.onError(() => { errors++ })
    await waitFor(() => errors > 0, 5000, `onError for params ${JSON.stringify(params)}`)
    assert.equal(opened, false, `socket with params ${JSON.stringify(params)} must not open`)
    s.disconnect()
  }
})
