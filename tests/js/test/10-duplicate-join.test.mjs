// 10. duplicate join of one topic on one socket.
//
// phoenix.js 1.8 itself leaves an open channel of the same topic before joining again
// (Channel#rejoin → Socket#leaveOpenTopic → dupChannel.leave()), so with the stock client the
// first channel is closed by the client. The server side of the contract (a second phx_join
// for a joined topic closes the first with phx_close) is exercised by disabling
// leaveOpenTopic, which is what a client that does not do this looks like to the server.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, push, collect, waitFor} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("stock client: second channel of the same topic closes the first and joins", {timeout: 30_000}, async t => {
  const token = server.token({sub: "alice"})
  const socket = openSocket(t, server, {token})
  const first = socket.channel("chat:room:9")
  let firstClosed = 0
  first.onClose(() => { firstClosed++ })
  await join(first)

  const second = socket.channel("chat:room:9")
  const msgs = collect(second, "new_message")
  await join(second)
  await waitFor(() => firstClosed === 1 && first.state === "closed", 2000, () => `first channel closed (state ${first.state})`)
  assert.equal(second.state, "joined")
  const reply = await push(second, "new_message", {content: "on the second channel"})
  await msgs.next(m => m.id === reply.id)
})

test("server closes the first join with phx_close when the topic is joined again", {timeout: 30_000}, async t => {
  const socket = openSocket(t, server, {token: server.token({sub: "alice"})})
  socket.leaveOpenTopic = () => {} // behave like a client that does not leave duplicates itself
  const first = socket.channel("chat:room:9")
  let firstClosed = 0
  first.onClose(() => { firstClosed++ })
  await join(first)
  const firstJoinRef = first.joinRef()

  const second = socket.channel("chat:room:9")
  await join(second)
  await waitFor(() => firstClosed === 1, 5000,
    () => `phx_close for the first join (join_ref ${firstJoinRef}); frames: ${JSON.stringify(socket.frames.filter(f => f.topic === "chat:room:9"))}`)
  assert.equal(first.state, "closed")
  assert.equal(second.state, "joined")
  const close = socket.frames.find(f => f.topic === "chat:room:9" && f.event === "phx_close")
  assert.equal(close.join_ref, firstJoinRef, `phx_close carries the first join's join_ref: ${JSON.stringify(close)}`)
  // only the second channel's subscription is live: one delivery per broadcast
  const msgs = collect(second, "new_message")
  const reply = await push(second, "new_message", {content: "once"})
  await msgs.next(m => m.id === reply.id)
  await new Promise(resolve => socket.ping(resolve))
  const copies = socket.frames.filter(f => f.event === "new_message" && f.payload.id === reply.id)
  assert.equal(copies.length, 1, `broadcast delivered once: ${JSON.stringify(copies)}`)
})
