// 8. phoenix.js 1.8 `authToken`: sent as the Sec-WebSocket-Protocol
//    ["phoenix", "base64url.bearer.phx." + btoa(token) without "="], no token in the URL.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, push, waitFor, WebSocket} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

/** ws WebSocket that records what phoenix.js passes to the transport constructor. */
function spyTransport(){
  const calls = []
  class SpyWebSocket extends WebSocket {
    constructor(url, protocols, ...rest){
      calls.push({url, protocols})
      super(url, protocols, ...rest)
    }
  }
  return {SpyWebSocket, calls}
}

test("authToken (Sec-WebSocket-Protocol) connects and joins", {timeout: 30_000}, async t => {
  const token = server.token({sub: "alice", name: "Alice"})
  const {SpyWebSocket, calls} = spyTransport()
  const errors = []
  const socket = openSocket(t, server, {transport: SpyWebSocket, authToken: token, connect: false})
  socket.onError(e => errors.push(e?.message || e?.error?.message || String(e)))
  socket.connect()

  await waitFor(() => socket.isConnected(), 5000, () => `socket open with authToken (errors: ${JSON.stringify(errors)})`)
  assert.equal(calls.length, 1)
  const {url, protocols} = calls[0]
  assert.ok(!/[?&]token=/.test(url), `no token in the URL: ${url}`)
  assert.match(url, /\/socket\/websocket\?vsn=2\.0\.0$/)
  assert.deepEqual(protocols, ["phoenix", "base64url.bearer.phx." + btoa(token).replace(/=/g, "")])
  assert.equal(socket.conn.protocol, "phoenix", "the server selects the \"phoenix\" subprotocol")

  const channel = socket.channel("chat:room:1")
  await join(channel)
  const reply = await push(channel, "new_message", {content: "via authToken"})
  assert.equal(typeof reply.id, "string")
  // the server knows who we are
  await join(socket.channel("user:alice"))
})

test("a bad authToken never opens the socket", {timeout: 30_000}, async t => {
  let opened = false
  const errors = []
  const socket = openSocket(t, server, {authToken: "this-is-not-a-valid-jwt", reconnectAfterMs: () => 10_000, connect: false})
  socket.onOpen(() => { opened = true })
  socket.onError(e => errors.push(e?.message || String(e)))
  socket.connect()
  await waitFor(() => errors.length > 0, 5000, "onError with a bad authToken")
  assert.equal(opened, false)
})

