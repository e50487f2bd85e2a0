// 14. Two real Chromium pages, served by the node (/calls/demo), join one call
// with phoenix.js and RTCPeerConnection (fake camera and microphone); each must
// receive the other's audio and video through the SFU: getStats() inbound-rtp
// bytes rising, video frames decoded. Then a page and a native ArcRTC client
// (`armoricore arc-client --tone`) share a call through the bridge.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {existsSync} from "node:fs"
import {chromium} from "playwright-core"
import {spawn} from "node:child_process"
import {startServer, binPath, childEnv} from "../server.mjs"

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"

let server, browser
before(async () => {
  // Loopback only: Chromium reaches it with --allow-loopback-in-peer-connection.
  server = await startServer({env: {ARMORICORE_CALLS__ADDRESSES: '["127.0.0.1"]'}})
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (scripts/test installs Debian's chromium; or set CHROMIUM)`)
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection",
    ],
  })
})
after(async () => {
  await browser?.close()
  await server?.stop()
})

async function openCall(user, call){
  const context = await browser.newContext()
  const page = await context.newPage()
  const logs = []
  page.on("console", m => logs.push(`${user}: ${m.text()}`))
  page.on("pageerror", e => logs.push(`${user}: page error ${e.message}`))
  const token = server.token({sub: user})
  await page.goto(`${server.httpUrl}/calls/demo?call=${call}&token=${encodeURIComponent(token)}`)
  return {user, page, logs, stats: () => page.evaluate(() => window.callStats?.() ?? null)}
}

async function waitFor(what, check, ms, pages){
  const deadline = Date.now() + ms
  for(;;){
    const value = await check()
    if(value){ return value }
    if(Date.now() > deadline){
      const logs = []
      for(const p of pages){
        logs.push(...p.logs, `${p.user} page log: ${await p.page.evaluate(() => document.getElementById("log")?.textContent)}`)
      }
      throw new Error(`${what}: not within ${ms} ms\n${logs.join("\n")}`)
    }
    await new Promise(r => setTimeout(r, 250))
  }
}

test("two browser pages see and hear each other through the SFU", {timeout: 90_000}, async () => {
  const a = await openCall("alice", "browser")
  const b = await openCall("bob", "browser")
  const pages = [a, b]
  for(const p of pages){
    await waitFor(`${p.user} receives audio and video`, async () => {
      const s = await p.stats()
      return s && s.audio.bytes > 0 && s.video.bytes > 0 && s.video.frames > 0
    }, 30_000, pages)
  }
  // Media keeps flowing: sample twice, 3 s apart.
  const first = await Promise.all(pages.map(p => p.stats()))
  const t0 = Date.now()
  await new Promise(r => setTimeout(r, 3000))
  const second = await Promise.all(pages.map(p => p.stats()))
  const secs = (Date.now() - t0) / 1000
  pages.forEach((p, i) => {
    for(const kind of ["audio", "video"]){
      const kbps = (second[i][kind].bytes - first[i][kind].bytes) * 8 / 1000 / secs
      console.log(`# ${p.user} receives ${kind} at ${kbps.toFixed(0)} kbit/s`)
      assert.ok(second[i][kind].bytes > first[i][kind].bytes, `${p.user} ${kind} bytes rising`)
    }
    assert.ok(second[i].video.frames > first[i].video.frames, `${p.user} decodes video frames`)
  })
  // Bob leaves: Alice's page is told.
  await b.page.evaluate(() => window.call.leave())
  await waitFor("alice sees bob leave", () => a.page.evaluate(
    () => document.getElementById("log").textContent.includes("bob left (left)")), 10_000, pages)
})

test("a browser page hears a native ArcRTC client through the bridge", {timeout: 90_000}, async () => {
  // The native side: the CLI client sending its Opus tone, receiving, JSON stats.
  const native = spawn(binPath(), ["arc-client", "--url", `ws://127.0.0.1:${server.port}/socket/websocket`,
    "--call", "mixed", "--tone", "--receive", "--json", "--duration", "60s"],
    {env: childEnv({ARMORICORE_TOKEN: server.token({sub: "native"})}), stdio: ["ignore", "pipe", "pipe"]})
  const lines = []
  let buffered = ""
  native.stdout.on("data", d => {
    buffered += d
    const parts = buffered.split("\n")
    buffered = parts.pop()
    lines.push(...parts.filter(Boolean).map(l => JSON.parse(l)))
  })
  const stderr = []
  native.stderr.on("data", d => stderr.push(String(d)))
  try {
    const page = await openCall("browser", "mixed")
    const pages = [page]
    await waitFor("the page receives the native audio", async () => {
      const s = await page.stats()
      return s && s.audio.packets > 50
    }, 30_000, pages)
    const first = await page.stats()
    await new Promise(r => setTimeout(r, 3000))
    const second = await page.stats()
    const packets = second.audio.packets - first.audio.packets
    const samples = second.audio.samples - first.audio.samples
    const concealed = second.audio.concealed - first.audio.concealed
    console.log(`# browser ← native: ${packets} audio packets in 3 s, ${samples} samples decoded, ${concealed} concealed`)
    // The tone is 50 packets a second of real Opus: Chrome decodes it.
    assert.ok(packets >= 120, `audio packets rising: ${packets}`)
    assert.ok(samples > 0 && concealed < samples / 10, `decoded, not concealed: ${samples} / ${concealed}`)
    // And the native client hears the page (its fake microphone) through the bridge.
    await waitFor("the native client receives the browser's audio", async () => lines.some(l =>
      l.second?.tracks?.some(t => t.user_id === "browser" && t.codec === "opus" && t.packets > 20)), 10_000, pages)
  } finally {
    native.kill("SIGTERM")
  }
  assert.ok(!stderr.join("").includes("Error"), stderr.join(""))
})
