// 9. long-poll transport (phoenix.js LongPoll over Node 20's global fetch) and longPollFallbackMs.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {LongPoll} from "phoenix"
import {startServer, openSocket, join, push, collect, waitFor, closedPort, WebSocket} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("Node 20 runs phoenix.js Ajax on fetch (no XMLHttpRequest needed)", () => {
  assert.equal(typeof globalThis.XMLHttpRequest, "undefined")
  assert.equal(typeof globalThis.fetch, "function")
  assert.equal(typeof globalThis.AbortController, "function")
})

test("LongPoll transport: join, push/reply, broadcasts both ways with a websocket client", {timeout: 30_000}, async t => {
  const lp = openSocket(t, server, {transport: LongPoll, token: server.token({sub: "alice"})})
  const ws = openSocket(t, server, {token: server.token({sub: "bob"})})
  const lpChan = lp.channel("chat:room:90")
  const wsChan = ws.channel("chat:room:90")
  const lpMsgs = collect(lpChan, "new_message")
  const wsMsgs = collect(wsChan, "new_message")

  await join(lpChan)
  assert.ok(lp.conn instanceof LongPoll, "connected over LongPoll")
  await join(wsChan)

  const mine = await push(lpChan, "new_message", {content: "from long-poll"})
  assert.equal(typeof mine.id, "string")
  assert.equal(typeof mine.offset, "number")
  const atWs = await wsMsgs.next(m => m.id === mine.id)
  assert.equal(atWs.user_id, "alice")
  await lpMsgs.next(m => m.id === mine.id)

  const theirs = await push(wsChan, "new_message", {content: "from websocket"})
  const atLp = await lpMsgs.next(m => m.id === theirs.id, 10_000)
  assert.equal(atLp.user_id, "bob")
  assert.equal(atLp.content, "from websocket")

  // several pushes in one tick are batched into one ndjson POST by phoenix.js
  const replies = await Promise.all([1, 2, 3].map(i => push(lpChan, "new_message", {content: `batch ${i}`})))
  assert.equal(new Set(replies.map(r => r.id)).size, 3)
})

test("LongPoll with authToken (X-Phoenix-AuthToken header) joins", {timeout: 30_000}, async t => {
  const lp = openSocket(t, server, {transport: LongPoll, authToken: server.token({sub: "alice"})})
  await join(lp.channel("user:alice"))
})

test("LongPoll with a bad token gets 403 and never opens", {timeout: 30_000}, async t => {
  let opened = false
  const errors = []
  const lp = openSocket(t, server, {transport: LongPoll, token: "not-a-jwt", connect: false, reconnectAfterMs: () => 10_000})
  lp.onOpen(() => { opened = true })
  lp.onError(e => errors.push(e))
  lp.connect()
  await waitFor(() => errors.length > 0, 5000,
    "onError. phoenix.js LongPoll only understands the poll statuses 200, 204, 410, 403 and 500 (0 = no/invalid JSON); " +
    "any other status (e.g. 401) throws \"unhandled poll status\" inside its fetch callback, which is swallowed, " +
    "and the socket then hangs in \"connecting\" forever without error, close or retry")
  assert.deepEqual(errors, [403], "LongPoll reports status 403 as its error")
  assert.equal(opened, false)
})

test("longPollFallbackMs falls back to LongPoll when the websocket cannot connect", {timeout: 30_000}, async t => {
  const deadPort = await closedPort()
  const attempted = []
  class DeadWebSocket extends WebSocket {
    constructor(url, protocols, ...rest){
      const rewritten = url.replace(/^ws:\/\/127\.0\.0\.1:\d+\//, `ws://127.0.0.1:${deadPort}/`)
      attempted.push(rewritten)
      super(rewritten, protocols, ...rest)
    }
  }
  const socket = openSocket(t, server, {
    transport: DeadWebSocket,
    longPollFallbackMs: 300,
    token: server.token({sub: "alice"}),
  })
  const channel = socket.channel("chat:room:91")
  await join(channel, "ok", 10_000)
  assert.ok(attempted.length >= 1, "the websocket was tried first")
  assert.equal(socket.transport, LongPoll, "socket.transport replaced by LongPoll")
  assert.ok(socket.conn instanceof LongPoll)
  const reply = await push(channel, "new_message", {content: "after fallback"})
  assert.equal(typeof reply.id, "string")
})

test("an idle long-poll connection survives a full poll cycle (server window < phoenix.js's 20 s request timeout)", {timeout: 60_000}, async t => {
  // phoenix.js aborts a poll after `longpollerTimeout` (default 20 000 ms, documented as
  // "double the server long poll timer") and then treats the connection as failed
  // (closeAndRetry → channels error and rejoin). Phoenix's server answers an idle poll
  // with 204 after 10 s. A server window >= 20 s makes every idle long-poll client reconnect.
  const lp = openSocket(t, server, {transport: LongPoll, token: server.token({sub: "alice"})})
  const channel = lp.channel("chat:room:92")
  let joins = 0
  channel.join().receive("ok", () => { joins++ })
  await waitFor(() => joins === 1, 5000, "join")
  const started = Date.now()
  await waitFor(() => Date.now() - started > 21_000 || lp.transportEvents.length > 0, 25_000, "21 s or a transport event")
  assert.deepEqual(lp.transportEvents, [], "transport events during 21 idle seconds")
  assert.equal(joins, 1, "no rejoin happened")
  assert.equal(channel.state, "joined")
  const reply = await push(channel, "new_message", {content: "still here"})
  assert.equal(typeof reply.id, "string")
})
