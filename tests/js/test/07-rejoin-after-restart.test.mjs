// 7. the stock client reconnects and rejoins by itself after a server restart on the same port.
import {test} from "node:test"
import assert from "node:assert/strict"
import {rmSync} from "node:fs"
import {startServer, openSocket, push, waitFor} from "../server.mjs"

test("socket reconnects and channel rejoins after SIGTERM + restart", {timeout: 60_000}, async t => {
  const first = await startServer()
  const {port, dataDir} = first
  let second = null
  t.after(async () => {
    await first.stop().catch(() => {})
    if(second){ await second.stop().catch(() => {}) }
    rmSync(dataDir, {recursive: true, force: true})
  })

  const socket = openSocket(t, first, {
    token: first.token({sub: "alice"}),
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 200,
  })
  const closes = []
  socket.onClose(e => closes.push(e))
  const channel = socket.channel("chat:room:7")
  let joinOks = 0
  let channelErrors = 0
  channel.onError(() => { channelErrors++ })
  channel.join().receive("ok", () => { joinOks++ })
  await waitFor(() => joinOks === 1, 5000, "first join ok")
  const before = await push(channel, "new_message", {content: "before restart"})

  const stopped = await first.stop({keepDataDir: true})
  assert.ok(stopped.ms < 5000, `server exited ${stopped.ms} ms after SIGTERM`)
  await waitFor(() => closes.length > 0, 5000, "socket onClose after server shutdown")
  assert.equal(closes[0].code, 1001, `close code sent by the server on shutdown (got ${closes[0].code} ${closes[0].reason})`)
  await waitFor(() => channelErrors > 0 && channel.state === "errored", 2000,
    () => `channel errored after the connection closed (state ${channel.state})`)

  second = await startServer({port, dataDir})
  assert.equal(second.port, port, "restarted on the same port")

  await waitFor(() => joinOks === 2 && channel.state === "joined", 10_000,
    () => `rejoin after restart (join oks: ${joinOks}, state: ${channel.state}, connection: ${socket.connectionState()})`)
  assert.equal(socket.isConnected(), true)

  const after = await push(channel, "new_message", {content: "after restart"})
  assert.equal(typeof after.id, "string")
  assert.notEqual(after.id, before.id)
  assert.equal(typeof after.offset, "number")
})
