// 4. presence with phoenix.js Presence: state/diff sync, multiple tabs, leave, update_status.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {startServer, openSocket, closeSocket, join, push, waitFor, collect} from "../server.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

/** Joins `topic` with a Presence tracking onSync; returns {channel, presence, syncs}. */
async function joinWithPresence(socket, topic){
  const channel = socket.channel(topic)
  const presence = new Presence(channel)
  const tracker = {channel, presence, syncs: 0}
  presence.onSync(() => { tracker.syncs++ })
  await join(channel)
  return tracker
}

/** {user_id: metas[]} view of a Presence */
function view(presence){
  const out = {}
  presence.list((id, {metas}) => { out[id] = metas })
  return out
}

function waitForUsers(tracker, expected, what){
  return waitFor(() => {
    const v = view(tracker.presence)
    const keys = Object.keys(v).sort()
    if(keys.join(",") !== Object.keys(expected).sort().join(",")){ return false }
    return keys.every(k => v[k].length === expected[k])
  }, 5000, () => `${what}: expected ${JSON.stringify(expected)} (user → number of metas), have ${JSON.stringify(view(tracker.presence))}`)
}

test("presence lists alice and bob, tracks a second tab and leaves", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice", name: "Alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const A = await joinWithPresence(alice, "chat:room:2")
  const B = await joinWithPresence(bob, "chat:room:2")

  await waitForUsers(A, {alice: 1, bob: 1}, "alice's list")
  await waitForUsers(B, {alice: 1, bob: 1}, "bob's list")
  assert.ok(A.syncs > 0 && B.syncs > 0, "onSync fired")

  // the first presence event of a join is presence_state
  for(const sock of [alice, bob]){
    const first = sock.frames.find(f => f.topic === "chat:room:2" && f.event.startsWith("presence_"))
    assert.equal(first.event, "presence_state", `first presence frame: ${JSON.stringify(first)}`)
  }

  const aliceMeta = view(B.presence).alice[0]
  const bobMeta = view(A.presence).bob[0]
  for(const [who, meta] of [["alice", aliceMeta], ["bob", bobMeta]]){
    assert.equal(typeof meta.phx_ref, "string", `${who} meta.phx_ref: ${JSON.stringify(meta)}`)
    assert.equal(typeof meta.status, "string", `${who} meta.status: ${JSON.stringify(meta)}`)
    assert.ok(meta.online_at !== undefined && meta.online_at !== null, `${who} meta.online_at: ${JSON.stringify(meta)}`)
  }
  assert.equal(aliceMeta.name, "Alice", `alice's meta carries the name claim: ${JSON.stringify(aliceMeta)}`)
  assert.notEqual(aliceMeta.phx_ref, bobMeta.phx_ref)

  // second tab for alice → 2 metas for alice in both lists
  const alice2 = openSocket(t, server, {token: server.token({sub: "alice", name: "Alice"})})
  const A2 = await joinWithPresence(alice2, "chat:room:2")
  await waitForUsers(B, {alice: 2, bob: 1}, "bob's list after alice's second tab joined")
  await waitForUsers(A, {alice: 2, bob: 1}, "alice's list after her second tab joined")
  await waitForUsers(A2, {alice: 2, bob: 1}, "second tab's list")
  const refs = view(B.presence).alice.map(m => m.phx_ref)
  assert.notEqual(refs[0], refs[1], `each tab has its own phx_ref: ${JSON.stringify(refs)}`)

  // close the second tab's socket → back to 1 meta
  await closeSocket(alice2)
  await waitForUsers(B, {alice: 1, bob: 1}, "bob's list after alice's second tab closed")
  await waitForUsers(A, {alice: 1, bob: 1}, "alice's list after her second tab closed")
  assert.equal(view(A.presence).alice[0].phx_ref, aliceMeta.phx_ref, "the remaining meta is the first tab's")

  // bob leaves the channel → alice sees only herself
  await new Promise((resolve, reject) => {
    B.channel.leave().receive("ok", resolve).receive("timeout", () => reject(new Error("leave timed out")))
  })
  await waitForUsers(A, {alice: 1}, "alice's list after bob left")
})

test("update_status changes the meta, bogus status is rejected", {timeout: 30_000}, async t => {
  const alice = openSocket(t, server, {token: server.token({sub: "alice", name: "Alice"})})
  const bob = openSocket(t, server, {token: server.token({sub: "bob"})})
  const A = await joinWithPresence(alice, "presence:room:3")
  const B = await joinWithPresence(bob, "presence:room:3")
  const diffs = collect(B.channel, "presence_diff")
  await waitForUsers(B, {alice: 1, bob: 1}, "bob's list")
  const before = view(B.presence).alice[0]

  await push(A.channel, "update_status", {status: "away"})
  await waitFor(() => {
    const metas = view(B.presence).alice
    return metas && metas.length === 1 && metas[0].status === "away"
  }, 5000, () => `alice's single meta with status "away" in bob's list: ${JSON.stringify(view(B.presence))}`)

  const after = view(B.presence).alice[0]
  assert.notEqual(after.phx_ref, before.phx_ref,
    "the updated meta needs a new phx_ref: phoenix.js applies joins before leaves, so a leave of the same phx_ref would drop the user")
  const diff = await diffs.next(d => d.joins?.alice?.metas?.some(m => m.status === "away"))
  assert.ok(diff.leaves?.alice, `the update diff also leaves the old meta: ${JSON.stringify(diff)}`)
  const joined = diff.joins.alice.metas.find(m => m.status === "away")
  assert.equal(joined.phx_ref_prev, before.phx_ref, `phx_ref_prev of the new meta: ${JSON.stringify(diff)}`)
  assert.deepEqual(diff.leaves.alice.metas.map(m => m.phx_ref), [before.phx_ref])
  // alice sees her own update too
  await waitFor(() => view(A.presence).alice?.[0]?.status === "away", 5000,
    () => `alice's own list shows "away": ${JSON.stringify(view(A.presence))}`)

  const err = await push(A.channel, "update_status", {status: "bogus"}, "error")
  assert.equal(typeof err, "object", `error reply: ${JSON.stringify(err)}`)
  // status unchanged
  assert.equal(view(B.presence).alice[0].status, "away")
})
