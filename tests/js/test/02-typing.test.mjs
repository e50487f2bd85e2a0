// 2. typing indicators: typing_start / typing_stop → user_typing broadcast.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, collect} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("typing_start / typing_stop reach the other member as user_typing", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const a = alice.channel("chat:room:1")
  const b = bob.channel("chat:room:1")
  const typing = collect(b, "user_typing")
  await join(a)
  await join(b)

  a.push("typing_start", {})
  const start = await typing.next(p => p.user_id === "alice")
  assert.equal(start.typing, true, `user_typing after typing_start: ${JSON.stringify(start)}`)

  a.push("typing_stop", {})
  const stop = await typing.next(p => p.user_id === "alice")
  assert.equal(stop.typing, false, `user_typing after typing_stop: ${JSON.stringify(stop)}`)
})
