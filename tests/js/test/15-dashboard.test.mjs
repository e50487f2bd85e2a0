// 15. The operations dashboard (/dashboard) in Debian's Chromium: refused without
// the password; with it the page goes live, shows a phoenix.js client that
// connects, shows a running transcode's progress bar moving, and cancelling the
// job from the page ends it. Screenshots (wide and narrow) go to test-output/.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {existsSync, mkdirSync, mkdtempSync, rmSync} from "node:fs"
import {execFileSync} from "node:child_process"
import {tmpdir} from "node:os"
import {join as pathJoin, dirname} from "node:path"
import {fileURLToPath} from "node:url"
import {chromium} from "playwright-core"
import {startServer, openSocket, join, waitFor} from "../server.mjs"

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"
const PASSWORD = "e2e-dashboard-password"
const API_KEY = "e2e-api-key"
const OUTPUT = pathJoin(dirname(fileURLToPath(import.meta.url)), "..", "test-output")

let server, browser, media
before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (scripts/test installs Debian's chromium; or set CHROMIUM)`)
  // A 720p input the veryslow preset takes many seconds over: time to watch it.
  media = mkdtempSync(pathJoin(tmpdir(), "armoricore-dash-"))
  execFileSync("ffmpeg", ["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=20",
    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", pathJoin(media, "in.mp4")])
  server = await startServer({env: {
    ARMORICORE_DASHBOARD__PASSWORD: PASSWORD,
    ARMORICORE_DASHBOARD__INTERVAL_MS: "500",
    ARMORICORE_API__KEY: API_KEY,
    ARMORICORE_MEDIA__PRESET: "veryslow",
    ARMORICORE_CALLS__ADDRESSES: '["127.0.0.1"]',
  }})
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  })
  mkdirSync(OUTPUT, {recursive: true})
})
after(async () => {
  await browser?.close()
  await server?.stop()
  if(media){ rmSync(media, {recursive: true, force: true}) }
})

test("the dashboard refuses requests without the password", async () => {
  const page = await fetch(`${server.httpUrl}/dashboard`)
  assert.equal(page.status, 401)
  assert.match(page.headers.get("www-authenticate"), /^Basic realm="Armoricore dashboard"/)
  const wrong = await fetch(`${server.httpUrl}/dashboard`, {headers: {authorization: `Basic ${btoa("ops:nope")}`}})
  assert.equal(wrong.status, 401)
  assert.equal((await fetch(`${server.httpUrl}/dashboard/token`)).status, 401)
  const ok = await fetch(`${server.httpUrl}/dashboard/token`, {headers: {authorization: `Basic ${btoa(`ops:${PASSWORD}`)}`}})
  assert.equal(ok.status, 200)
  assert.equal(ok.headers.get("cache-control"), "no-store")
})

test("live page: a client appears, a transcode's progress moves, cancel ends it", {timeout: 120_000}, async t => {
  const context = await browser.newContext({
    httpCredentials: {username: "ops", password: PASSWORD},
    viewport: {width: 1280, height: 1000},
  })
  const page = await context.newPage()
  const logs = []
  const requests = []
  page.on("console", m => logs.push(`console: ${m.text()}`))
  page.on("pageerror", e => logs.push(`page error: ${e.message}`))
  page.on("request", r => requests.push(r.url()))
  page.on("websocket", ws => requests.push(ws.url()))
  const failing = what => () => `${what}\n${logs.join("\n")}\n${server.output().slice(-3000)}`

  const response = await page.goto(`${server.httpUrl}/dashboard`)
  assert.equal(response.status(), 200)
  assert.match(response.headers()["content-security-policy"], /default-src 'self'.*frame-ancestors 'none'/)
  await waitFor(async () => (await page.textContent("#live")) === "live", 10_000, failing("the page's socket live"))
  await waitFor(() => page.evaluate(() => window.dashboard.snapshots > 0), 10_000, failing("a first snapshot"))

  // A stock phoenix.js client connects: the page lists it within a few seconds.
  const visitor = openSocket(t, server, {token: server.token({sub: "e2e-visitor"})})
  await join(visitor.channel("chat:room:lobby"))
  await page.locator('#clients tr[data-user="e2e-visitor"]').waitFor({timeout: 5_000})
  await page.locator('#topics tr[data-topic="chat:room:lobby"]').waitFor({timeout: 5_000})

  // Names come from clients: they are shown as text, never run as markup.
  const evil = `<img src=x onerror="window.pwned=1">`
  const intruder = openSocket(t, server, {token: server.token({sub: evil})})
  await join(intruder.channel(`chat:room:<b>${evil}</b>`))
  const row = page.locator("#clients tr", {hasText: "<img src=x"})
  await row.waitFor({timeout: 5_000})
  assert.equal(await row.locator("td").first().textContent(), evil)
  await page.locator("#topics tr", {hasText: "chat:room:<b>"}).waitFor({timeout: 5_000})
  assert.equal(await page.locator("main img, main b:has-text('<img')").count(), 0, "no markup from names")
  assert.equal(await page.evaluate(() => window.pwned), undefined)

  // A transcode: its progress bar moves.
  const upload = await fetch(`${server.httpUrl}/api/events`, {
    method: "POST",
    headers: {authorization: `apikey ${API_KEY}`, "content-type": "application/json"},
    body: JSON.stringify({event_type: "media.uploaded", payload: {media_id: "dash1", user_id: "u1",
      file_path: pathJoin(media, "in.mp4"), content_type: "video/mp4", file_size: 1}}),
  })
  assert.equal(upload.status, 202)
  const bar = page.locator('#jobs progress[data-progress="dash1"]')
  const value = async () => Number(await bar.getAttribute("value", {timeout: 1000}).catch(() => NaN))
  const first = await waitFor(async () => { const v = await value(); return v > 0 ? v : null }, 30_000, failing("the progress bar above 0"))
  const later = await waitFor(async () => { const v = await value(); return v > first ? v : null }, 30_000, failing(`the progress bar beyond ${first}`))
  assert.ok(later > first && later < 100, `progress ${first} → ${later}`)

  // Presence of a chosen topic: the visitor is in the lobby.
  await page.locator('#topics button[data-action="presence"][data-topic="chat:room:lobby"]').click()
  await page.locator('#presence tr[data-presence="e2e-visitor"]').waitFor({timeout: 5_000})

  // The picture for people (the README links it), taken while the job runs.
  await page.screenshot({path: pathJoin(OUTPUT, "dashboard.png"), fullPage: true})

  // Cancel from the page: the job ends, failed with "cancelled".
  await page.locator('#jobs tr[data-status="running"] button[data-action="cancel"][data-media-id="dash1"]').click()
  await page.locator("#jobs tr[data-status=failed]", {hasText: "cancelled"}).waitFor({timeout: 15_000})
  await waitFor(async () => {
    const r = await fetch(`${server.httpUrl}/api/media/dash1`, {headers: {authorization: `apikey ${API_KEY}`}})
    const m = await r.json()
    return m.status === "failed" && /cancelled/.test(m.error)
  }, 10_000, failing("the job recorded as cancelled"))
  assert.equal(await bar.count(), 0, "no progress bar once it ended")
  assert.match(await page.textContent("#toast"), /cancel dash1/)

  // Disconnect the visitor from the page; it leaves the list.
  await page.locator('#clients button[data-action="disconnect"][data-user-id="e2e-visitor"]').click()
  await waitFor(() => visitor.transportEvents.includes("close 1000 disconnected by an operator"), 5_000,
    failing(`the visitor's socket closed (${visitor.transportEvents})`))
  assert.match(await page.textContent("#toast"), /disconnect e2e-visitor: \{"disconnected":1/)
  // phoenix.js connects again by itself (as after Phoenix's "disconnect"): the page shows it back.
  await waitFor(() => visitor.isConnected(), 5_000, failing("the visitor reconnected"))
  await page.locator('#clients tr[data-user="e2e-visitor"]').waitFor({timeout: 5_000})

  // Narrow screen: everything in one column, nothing wider than the screen.
  await page.setViewportSize({width: 390, height: 844})
  await page.waitForTimeout(300)
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a 390px screen`)
  await page.screenshot({path: pathJoin(OUTPUT, "dashboard-narrow.png"), fullPage: true})

  // Everything came from the node: no fonts, CDNs or other hosts.
  const foreign = requests.filter(u => !u.startsWith(server.httpUrl) && !u.startsWith(server.httpUrl.replace("http", "ws")))
  assert.deepEqual(foreign, [], "requests to other hosts")
  await context.close()
})
