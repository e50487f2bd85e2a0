// 3. comments: comments:stream:<id>, new_comment → {id, offset} reply and broadcast.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {startServer, openSocket, join, push, collect} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test("new_comment on comments:stream:7 replies {id, offset} and is broadcast", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const a = alice.channel("comments:stream:7")
  const b = bob.channel("comments:stream:7")
  const bobComments = collect(b, "new_comment")
  await join(a)
  await join(b)

  const reply = await push(a, "new_comment", {content: "first!"})
  assert.equal(typeof reply.id, "string", `reply: ${JSON.stringify(reply)}`)
  assert.equal(typeof reply.offset, "number", `reply: ${JSON.stringify(reply)}`)

  const c = await bobComments.next(p => p.id === reply.id)
  assert.equal(c.content, "first!")
  assert.equal(c.offset, reply.offset)
  if("user_id" in c){ assert.equal(c.user_id, "alice") }
})
