// 6. leave: phx_leave is acknowledged, the channel closes, and it gets no more broadcasts.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, push, collect, waitFor} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("leave resolves ok, closes the channel, stops broadcasts", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const a = alice.channel("chat:room:6")
  const b = bob.channel("chat:room:6")
  const bobMsgs = collect(b, "new_message")
  const aliceMsgs = collect(a, "new_message")
  await join(a)
  await join(b)

  // sanity: bob gets broadcasts while joined
  const first = await push(a, "new_message", {content: "before leave"})
  await bobMsgs.next(m => m.id === first.id)

  let closed = false
  b.onClose(() => { closed = true })
  const leaveFramesBefore = bob.frames.length
  const resp = await new Promise((resolve, reject) => {
    b.leave()
      .receive("ok", resolve)
      .receive("error", e => reject(new Error(`leave error: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("leave timed out")))
  })
  assert.equal(typeof resp, "object")
  await waitFor(() => closed && b.state === "closed", 2000, "channel closed after leave")
  // phoenix.js 1.8 resolves leave() "ok" locally right away (Channel#leave sets state "leaving",
  // so canPush() is false and it triggers "ok" itself); the server's reply arrives afterwards
  // and is only visible in the raw frames.
  const reply = await waitFor(() => bob.frames.slice(leaveFramesBefore).find(f => f.topic === "chat:room:6" && f.event === "phx_reply"),
    5000, () => `server reply to phx_leave; frames: ${JSON.stringify(bob.frames.slice(leaveFramesBefore))}`)
  assert.equal(reply.payload.status, "ok", `phx_leave reply: ${JSON.stringify(reply)}`)

  // broadcasts after the leave are not delivered to bob's socket at all
  const second = await push(a, "new_message", {content: "after leave"})
  // alice (still joined) sees it; give bob's socket a heartbeat round trip to flush anything in flight
  await aliceMsgs.next(m => m.id === second.id)
  await new Promise(resolve => bob.ping(resolve))
  const leaked = bob.frames.filter(f => f.event === "new_message" && f.payload?.id === second.id)
  assert.deepEqual(leaked, [], "no broadcast frames for a left channel")
  assert.equal(bobMsgs.all.some(m => m.id === second.id), false)

  // pushing to the left topic raw gives "unmatched topic"
  const frame = await rawPush(bob, "chat:room:6", "new_message", {content: "x"})
  assert.deepEqual(frame.payload, {status: "error", response: {reason: "unmatched topic"}})
})

/** Sends a frame on the socket outside any channel object and waits for its reply frame. */
function rawPush(socket, topic, event, payload){
  const ref = socket.makeRef()
  socket.push({topic, event, payload, ref, join_ref: null})
  return waitFor(() => socket.frames.find(f => f.ref === ref), 5000, `reply to raw ${event} on ${topic}`)
}
