// 13. missed-message recovery with the stock client: channel params given as a function,
// so every (re)join sends `since: {offset, epoch}` of the last message seen.
//
// phoenix.js 1.8.16 re-evaluates function params on every join it sends:
// `Channel` keeps `this.params = closure(params || {})` (utils.js `closure` returns a
// function as is) and hands that function to its join `Push`; `Push.send()` builds the
// frame with `payload: this.payload()`, and `Channel.rejoin()` → `joinPush.resend()` →
// `send()`. A rejoin after `socket.connect()` therefore sends fresh params.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {performance} from "node:perf_hooks"
import {startServer, openSocket, closeSocket, join, push, waitFor} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

/**
 * A phoenix.js client that keeps its place in a topic, as docs/recovery.md recommends:
 * the channel params are a function returning `{since}` from the last `new_message`
 * seen, with the epoch of the first join reply. Records every join reply, every join
 * payload sent, and every event of the channel in arrival order.
 */
function recoveringClient(t, topic, user){
  const socket = openSocket(t, server, {token: server.token({sub: user})})
  const c = {
    socket,
    epoch: null,
    offset: null,
    joinPayloads: [],   // what the params function returned, per join sent
    joinReplies: [],    // "ok" join responses
    events: [],         // ["join", resp] and ["msg", payload], in arrival order
  }
  c.channel = socket.channel(topic, () => {
    const params = c.epoch === null ? {} : {since: {offset: c.offset, epoch: c.epoch}}
    c.joinPayloads.push(params)
    return params
  })
  c.channel.on("new_message", m => {
    c.events.push(["msg", m, performance.now()])
    c.offset = m.offset
  })
  c.channel.join().receive("ok", resp => {
    c.joinReplies.push(resp)
    c.events.push(["join", resp, performance.now()])
    if(c.epoch === null){ c.epoch = resp.epoch; c.offset = resp.offset }
  })
  c.messagesAfter = joinIndex => {
    // messages received after the joinIndex-th (0-based) join reply
    let seen = -1
    const out = []
    for(const [kind, v] of c.events){
      if(kind === "join"){ seen++ } else if(seen >= joinIndex && kind === "msg"){ out.push(v) }
    }
    return out
  }
  return c
}

/** bob-style poster: n sequential new_message pushes, returns their replies. */
async function post(channel, n, label){
  const replies = []
  for(let i = 1; i <= n; i++){
    replies.push(await push(channel, "new_message", {content: `${label} ${i}`}))
  }
  return replies
}

function frameSummary(socket, topic){
  return socket.frames.filter(f => f.topic === topic)
    .map(f => `${f.event} ${JSON.stringify(f.payload)}`).join("\n  ")
}

test("rejoin with function params recovers exactly the missed messages, before live ones", {timeout: 60_000}, async t => {
  const topic = "chat:room:r1"
  const N = 20
  const alice = recoveringClient(t, topic, "alice")
  await waitFor(() => alice.joinReplies.length === 1, 5000, "alice's first join reply")
  const first = alice.joinReplies[0]
  assert.equal(typeof first.offset, "number", `join reply carries offset: ${JSON.stringify(first)}`)
  assert.equal(typeof first.epoch, "string", `join reply carries epoch: ${JSON.stringify(first)}`)
  assert.ok(first.epoch.length > 0)
  assert.equal("recovered" in first, false, `no recovered without since: ${JSON.stringify(first)}`)
  assert.deepEqual(alice.joinPayloads, [{}], "first join sent no since")

  const bobSocket = openSocket(t, server, {token: server.token({sub: "bob"})})
  const bob = bobSocket.channel(topic)
  await join(bob)

  // alice sees a few live messages, so her since points at a real message
  const live = await post(bob, 3, "live")
  await waitFor(() => alice.offset === live[2].offset, 5000, () => `alice sees the live messages (offset ${alice.offset})`)
  assert.deepEqual(alice.messagesAfter(0).map(m => m.offset), live.map(r => r.offset))
  const lastSeen = alice.offset

  await closeSocket(alice.socket)
  assert.equal(alice.channel.state, "errored", "disconnect errors the channel, so it rejoins on the next connect")

  const missed = await post(bob, N, "missed")
  const missedOffsets = missed.map(r => r.offset)
  assert.deepEqual(missedOffsets, Array.from({length: N}, (_, i) => lastSeen + 1 + i),
    "bob's replies carry the next offsets")

  // reconnect: the channel rejoins by itself with fresh params; as soon as the rejoin
  // reply is in, bob sends a 21st message, which must come after the replayed ones
  let liveReply = null
  alice.channel.joinPush.receive("ok", () => {
    if(alice.joinReplies.length === 2 && !liveReply){
      liveReply = push(bob, "new_message", {content: "after rejoin"})
    }
  })
  alice.socket.connect()
  await waitFor(() => alice.joinReplies.length === 2, 5000,
    () => `alice's channel rejoins by itself (state ${alice.channel.state}, replies ${JSON.stringify(alice.joinReplies)})`)
  assert.deepEqual(alice.joinPayloads[1], {since: {offset: lastSeen, epoch: first.epoch}},
    "the rejoin sent since from the last message seen")
  const rejoin = alice.joinReplies[1]
  assert.deepEqual(rejoin, {offset: lastSeen + N, epoch: first.epoch, recovered: true}, "rejoin reply")

  await waitFor(() => liveReply, 2000, "bob's 21st push sent")
  const last = await liveReply
  await waitFor(() => alice.messagesAfter(1).some(m => m.id === last.id), 5000,
    () => `the 21st message at alice; frames:\n  ${frameSummary(alice.socket, topic)}`)

  const after = alice.messagesAfter(1)
  assert.deepEqual(after.map(m => m.id), [...missed.map(r => r.id), last.id],
    `alice gets the ${N} missed messages, in order, then the live one; frames:\n  ${frameSummary(alice.socket, topic)}`)
  assert.deepEqual(after.slice(0, N).map(m => m.content), missed.map((_, i) => `missed ${i + 1}`))
  assert.ok(after.every(m => m.user_id === "bob"))

  const all = alice.messagesAfter(0).map(m => m.offset)
  assert.equal(new Set(all).size, all.length, `no duplicates: ${all}`)
  assert.deepEqual(all, Array.from({length: all.length}, (_, i) => all[0] + i), `contiguous offsets: ${all}`)
  assert.equal(all.length, 3 + N + 1)

  // the wire: reply, then the replayed broadcasts with null refs, then the live one
  const frames = alice.socket.frames.filter(f => f.topic === topic && (f.event === "phx_reply" || f.event === "new_message"))
  const rejoinAt = frames.findIndex(f => f.event === "phx_reply" && f.payload.response?.recovered === true)
  const replayed = frames.slice(rejoinAt + 1, rejoinAt + 1 + N)
  assert.ok(replayed.every(f => f.event === "new_message" && f.ref === null && f.join_ref === null),
    `replayed frames: ${JSON.stringify(replayed.slice(0, 2))}...`)
})

test("a stale epoch joins with recovered: false and replays nothing", {timeout: 30_000}, async t => {
  const topic = "chat:room:r1"
  const carolSocket = openSocket(t, server, {token: server.token({sub: "carol"})})
  const carol = carolSocket.channel(topic, {since: {offset: 1, epoch: "nope"}})
  const got = []
  carol.on("new_message", m => got.push(m))
  const resp = await join(carol)
  assert.equal(resp.recovered, false, `join reply: ${JSON.stringify(resp)}`)
  assert.equal(typeof resp.offset, "number", `join reply: ${JSON.stringify(resp)}`)
  assert.ok(resp.offset > 1, `head of chat:room:r1 is past 1: ${JSON.stringify(resp)}`)
  assert.equal(typeof resp.epoch, "string")
  assert.notEqual(resp.epoch, "nope")

  // a replay would be queued right behind the reply, so the first new_message carol
  // gets must be a live one, continuing from the head
  const daveSocket = openSocket(t, server, {token: server.token({sub: "dave"})})
  const dave = daveSocket.channel(topic)
  await join(dave)
  const r = await push(dave, "new_message", {content: "live"})
  await waitFor(() => got.some(m => m.id === r.id), 5000, "the live message at carol")
  assert.deepEqual(got.map(m => m.offset), [resp.offset + 1], "nothing replayed, then the live message")
  assert.deepEqual(carolSocket.frames.filter(f => f.event === "new_message").map(f => f.payload.id), [r.id])
})

test("messages pushed out of history: recovered: false, nothing replayed", {timeout: 60_000}, async t => {
  // chat:* keeps 100 messages: miss 101 and the first one missed is gone
  const topic = "chat:room:r101"
  const alice = recoveringClient(t, topic, "erin")
  await waitFor(() => alice.joinReplies.length === 1, 5000, "first join reply")
  const posterSocket = openSocket(t, server, {token: server.token({sub: "frank"})})
  const poster = posterSocket.channel(topic)
  await join(poster)
  await closeSocket(alice.socket)
  const missed = await post(poster, 101, "m")
  alice.socket.connect()
  await waitFor(() => alice.joinReplies.length === 2, 5000, "rejoin reply")
  assert.deepEqual(alice.joinPayloads[1], {since: {offset: 0, epoch: alice.epoch}})
  assert.deepEqual(alice.joinReplies[1], {offset: missed[100].offset, epoch: alice.epoch, recovered: false})
  const live = await push(poster, "new_message", {content: "live"})
  await waitFor(() => alice.messagesAfter(1).length > 0, 5000, "the live message")
  assert.deepEqual(alice.messagesAfter(1).map(m => m.id), [live.id], "nothing replayed, then the live message")
})

test("timing: rejoin and replay of 100 missed messages", {timeout: 60_000}, async t => {
  const topic = "chat:room:r100"
  const N = 100
  const alice = recoveringClient(t, topic, "grace")
  await waitFor(() => alice.joinReplies.length === 1, 5000, "first join reply")
  const posterSocket = openSocket(t, server, {token: server.token({sub: "heidi"})})
  const poster = posterSocket.channel(topic)
  await join(poster)
  await post(poster, 1, "seen")
  await waitFor(() => alice.offset === 1, 5000, "alice sees offset 1")
  await closeSocket(alice.socket)
  const missed = await post(poster, N, "missed")

  const t0 = performance.now()
  alice.socket.connect()
  await waitFor(() => alice.messagesAfter(1).length >= N, 10_000,
    () => `${N} replayed messages (got ${alice.messagesAfter(1).length})`)
  // times taken in the handlers, as the messages arrived
  const rejoinAt = alice.events.filter(([kind]) => kind === "join")[1][2]
  const lastAt = alice.events.filter(([kind, , at]) => kind === "msg" && at >= rejoinAt)[N - 1][2]
  console.log(`recovery of ${N} messages: socket.connect() → rejoin reply ${(rejoinAt - t0).toFixed(1)} ms, ` +
    `→ ${N}th replayed message ${(lastAt - t0).toFixed(1)} ms`)

  assert.deepEqual(alice.joinReplies[1], {offset: 1 + N, epoch: alice.epoch, recovered: true})
  assert.deepEqual(alice.messagesAfter(1).map(m => m.id), missed.map(r => r.id))
})
