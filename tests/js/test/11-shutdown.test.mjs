// 11. graceful shutdown: SIGTERM closes websockets with 1001 and the process exits 0 promptly.
import {test} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, waitFor} from "../server.mjs"

test("SIGTERM closes sockets with 1001 and exits 0 within 5 s", {timeout: 30_000}, async t => {
  const server = await startServer()
  t.after(() => server.stop().catch(() => {}))
  const socket = openSocket(t, server, {token: server.token({sub: "alice"}), reconnectAfterMs: () => 10_000})
  const closes = []
  socket.onClose(e => closes.push({code: e.code, reason: e.reason}))
  await join(socket.channel("chat:room:11"))

  const result = await server.stop()
  assert.ok(result.ms < 5000, `exited after ${result.ms} ms`)
  assert.equal(result.signal, null, `exited by itself, not killed (${JSON.stringify(result)})`)
  assert.equal(result.code, 0, `exit code ${result.code}; output:\n${server.output()}`)
  await waitFor(() => closes.length > 0, 2000, "socket close event")
  assert.equal(closes[0].code, 1001, `close frame: ${JSON.stringify(closes[0])}`)
})
