// 1. chat: join, push new_message → {id, offset}, broadcast to every member (sender included).
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, push, collect, waitFor, RFC3339} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("join chat:room:1, push new_message, broadcast to both members", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice", name: "Alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})

  const aliceChan = alice.channel("chat:room:1")
  const bobChan = bob.channel("chat:room:1")
  const aliceMsgs = collect(aliceChan, "new_message")
  const bobMsgs = collect(bobChan, "new_message")

  const aliceJoin = await join(aliceChan)
  assert.equal(typeof aliceJoin, "object", "join reply response is an object")
  assert.ok(aliceJoin !== null && !Array.isArray(aliceJoin), `join reply response should be a map, got ${JSON.stringify(aliceJoin)}`)
  await join(bobChan)
  assert.equal(aliceChan.state, "joined")
  assert.equal(bobChan.state, "joined")

  const reply = await push(aliceChan, "new_message", {content: "hi"})
  assert.equal(typeof reply.id, "string", `reply.id should be a string: ${JSON.stringify(reply)}`)
  assert.ok(reply.id.length > 0)
  assert.equal(typeof reply.offset, "number", `reply.offset should be a number: ${JSON.stringify(reply)}`)

  const isMine = m => m.id === reply.id
  const atBob = await bobMsgs.next(isMine)
  assert.equal(atBob.user_id, "alice")
  assert.equal(atBob.content, "hi")
  assert.equal(atBob.offset, reply.offset)
  assert.equal(typeof atBob.timestamp, "string")
  assert.match(atBob.timestamp, RFC3339)
  assert.ok(!Number.isNaN(Date.parse(atBob.timestamp)), `timestamp parses: ${atBob.timestamp}`)

  const atAlice = await aliceMsgs.next(isMine)
  assert.deepEqual(atAlice, atBob, "sender receives the same broadcast")

  // a second message gets a new id and a larger offset
  const reply2 = await push(bobChan, "new_message", {content: "hello alice"})
  assert.notEqual(reply2.id, reply.id)
  assert.ok(reply2.offset > reply.offset, `offsets increase: ${reply.offset} then ${reply2.offset}`)
  const second = await aliceMsgs.next(m => m.id === reply2.id)
  assert.equal(second.user_id, "bob")
  assert.equal(second.content, "hello alice")
})

test("broadcast frames have null join_ref and ref", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const a = alice.channel("chat:room:1")
  const b = bob.channel("chat:room:1")
  await join(a); await join(b)
  const {id} = await push(a, "new_message", {content: "frame check"})
  const frame = await waitFor(() => bob.frames.find(f => f.event === "new_message" && f.payload.id === id),
    5000, () => `new_message broadcast at bob; frames: ${JSON.stringify(bob.frames)}`)
  assert.equal(frame.topic, "chat:room:1")
  assert.equal(frame.ref, null, `broadcast ref: ${JSON.stringify(frame)}`)
  assert.equal(frame.join_ref, null, `broadcast join_ref: ${JSON.stringify(frame)}`)
})
