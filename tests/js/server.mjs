// Helpers for the Armoricore end-to-end tests: start/stop the server binary,
// mint tokens with it, open phoenix.js sockets over `ws`, and small promise
// utilities (waitFor, join/push helpers, event collectors).
import {spawn, execFileSync} from "node:child_process"
import {mkdtempSync, rmSync} from "node:fs"
import {tmpdir} from "node:os"
import {join as pathJoin} from "node:path"
import net from "node:net"
import {Socket} from "phoenix"
import WebSocket from "ws"

export {WebSocket}

export const JWT_SECRET = "armoricore-js-e2e-secret-0123456789abcdef"
const START_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 10_000

/**
 * The environment for the server and token processes: ours, minus the variables that only
 * configure this harness (ARMORICORE_BIN, ARMORICORE_E2E_*). The server reads every other
 * ARMORICORE_* variable as configuration (ARMORICORE_<SECTION>__<KEY>) and refuses to start
 * on names it does not understand, such as ARMORICORE_BIN.
 */
export function childEnv(extra = {}){
  const env = {}
  for(const [k, v] of Object.entries(process.env)){
    if(k === "ARMORICORE_BIN" || k.startsWith("ARMORICORE_E2E_")){ continue }
    env[k] = v
  }
  return {...env, JWT_SECRET, ...extra}
}

export function binPath(){
  const bin = process.env.ARMORICORE_BIN
  if(!bin){
    throw new Error("ARMORICORE_BIN is not set: point it at the armoricore server binary, " +
      "e.g. ARMORICORE_BIN=/var/tmp/armoricore-target/debug/armoricore npm test")
  }
  return bin
}

/**
 * Starts `$ARMORICORE_BIN serve --log-format json`.
 *
 * @param {object} [opts]
 * @param {number} [opts.port=0]   PORT env (0 = let the server pick)
 * @param {string} [opts.dataDir]  data dir to reuse (e.g. across a restart); a fresh temp dir otherwise
 * @param {object} [opts.env]      extra env vars
 * @returns {Promise<Server>}
 */
export async function startServer(opts = {}){
  const bin = binPath()
  const ownDataDir = !opts.dataDir
  const dataDir = opts.dataDir || mkdtempSync(pathJoin(tmpdir(), "armoricore-e2e-"))
  const env = childEnv({
    PORT: String(opts.port ?? 0),
    ARMORICORE_SERVER__HOST: "127.0.0.1",
    ARMORICORE_SERVER__DATA_DIR: dataDir,
    ...(opts.env || {}),
  })
  const proc = spawn(bin, ["serve", "--log-format", "json"], {env, stdio: ["ignore", "pipe", "pipe"]})
  const server = new Server(proc, dataDir, ownDataDir)
  try {
    await server.listening()
  } catch(e){
    if(!server.exit && !server.spawnError){ proc.kill("SIGKILL"); await server.exited }
    server._cleanup(false)
    throw e
  }
  return server
}

export class Server {
  constructor(proc, dataDir, ownDataDir){
    this.proc = proc
    this.dataDir = dataDir
    this.ownDataDir = ownDataDir
    this.port = null
    this.lines = []       // raw output lines (stdout and stderr, in arrival order)
    this.logs = []        // parsed JSON log lines from stdout
    this.exit = null      // {code, signal} once exited
    this.exited = new Promise(resolve => {
      proc.on("exit", (code, signal) => { this.exit = {code, signal}; resolve(this.exit) })
    })
    this.spawnError = null
    proc.on("error", err => { this.spawnError = err })
    this._lineWaiters = []
    for(const [stream, name] of [[proc.stdout, "stdout"], [proc.stderr, "stderr"]]){
      let buf = ""
      stream.setEncoding("utf8")
      stream.on("data", chunk => {
        buf += chunk
        let nl
        while((nl = buf.indexOf("\n")) >= 0){
          const line = buf.slice(0, nl).replace(/\r$/, "")
          buf = buf.slice(nl + 1)
          this._onLine(name, line)
        }
      })
    }
  }

  _onLine(stream, line){
    if(process.env.ARMORICORE_E2E_VERBOSE){ process.stderr.write(`[server ${stream}] ${line}\n`) }
    this.lines.push(`${stream}: ${line}`)
    if(stream === "stdout"){
      try {
        const obj = JSON.parse(line)
        if(obj && typeof obj === "object"){ this.logs.push(obj) }
      } catch { /* not JSON */ }
    }
    this._lineWaiters.forEach(w => w())
  }

  output(){ return this.lines.join("\n") }

  /** Resolves with the port once the `listening` log line appears. */
  listening(){
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        done()
        this.proc.kill("SIGKILL")
        reject(new Error(`server did not log "listening" within ${START_TIMEOUT_MS} ms. Output:\n${this.output()}`))
      }, START_TIMEOUT_MS)
      const check = () => {
        if(this.spawnError){
          done(); reject(new Error(`could not spawn ${binPath()}: ${this.spawnError.message}`)); return
        }
        for(const log of this.logs){
          const f = log.fields || {}
          if(f.message === "listening" && typeof f.addr === "string"){
            const m = f.addr.match(/:(\d+)$/)
            if(m){
              this.port = Number(m[1])
              done(); resolve(this.port); return
            }
          }
        }
        if(this.exit){
          done()
          reject(new Error(`server exited (${JSON.stringify(this.exit)}) before listening. Output:\n${this.output()}`))
        }
      }
      const done = () => {
        clearTimeout(timer)
        this._lineWaiters = this._lineWaiters.filter(w => w !== check)
      }
      this._lineWaiters.push(check)
      this.proc.on("exit", () => setImmediate(check))
      this.proc.on("error", () => setImmediate(check))
      check()
    })
  }

  get url(){ return `ws://127.0.0.1:${this.port}/socket` }
  get httpUrl(){ return `http://127.0.0.1:${this.port}` }

  /**
   * SIGTERM and wait for the exit. Falls back to SIGKILL after STOP_TIMEOUT_MS and then
   * rejects, so a server that does not shut down gracefully fails the test.
   * @returns {Promise<{code, signal, ms}>}
   */
  async stop({keepDataDir = false} = {}){
    const t0 = Date.now()
    let result
    if(!this.exit){
      this.proc.kill("SIGTERM")
      let timer
      const timedOut = await Promise.race([
        this.exited.then(() => false),
        new Promise(r => { timer = setTimeout(() => r(true), STOP_TIMEOUT_MS) }),
      ])
      clearTimeout(timer)
      if(timedOut){
        this.proc.kill("SIGKILL")
        await this.exited
        this._cleanup(keepDataDir)
        throw new Error(`server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM. Output:\n${this.output()}`)
      }
    }
    result = {...this.exit, ms: Date.now() - t0}
    this._cleanup(keepDataDir)
    return result
  }

  _cleanup(keepDataDir){
    if(this.ownDataDir && !keepDataDir){
      try { rmSync(this.dataDir, {recursive: true, force: true}) } catch { /* ignore */ }
    }
  }

  /** Mints a token with the server binary (same JWT_SECRET). */
  token(opts){ return mintToken(opts) }
}

/**
 * `$ARMORICORE_BIN token --sub alice [--name Alice] [--channels 'chat:room:*'] [--ttl 1h]`
 * @returns {string} the JWT
 */
export function mintToken({sub, name, channels, ttl} = {}){
  if(!sub){ throw new Error("mintToken: sub is required") }
  const args = ["token", "--sub", sub]
  if(name !== undefined){ args.push("--name", name) }
  if(channels !== undefined){ args.push("--channels", Array.isArray(channels) ? channels.join(",") : channels) }
  if(ttl !== undefined){ args.push("--ttl", ttl) }
  let out
  try {
    out = execFileSync(binPath(), args, {
      env: childEnv(),
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 10_000,
    })
  } catch(e){
    throw new Error(`\`armoricore ${args.join(" ")}\` failed: ${e.message}\nstdout: ${e.stdout}\nstderr: ${e.stderr}`)
  }
  const jwt = out.split(/\r?\n/).map(l => l.trim()).filter(l => /^[\w-]+\.[\w-]+\.[\w-]*$/.test(l))
  if(jwt.length !== 1){
    throw new Error(`\`armoricore ${args.join(" ")}\` should print exactly one JWT line, got:\n${out}`)
  }
  return jwt[0]
}

/** Decodes a JWT's claims (no verification). */
export function jwtClaims(token){
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"))
}

/**
 * Opens a phoenix.js Socket with ws as transport (unless opts.transport is given) and
 * disconnects it when the test ends.
 *
 * @param {import("node:test").TestContext} t
 * @param {Server|string} server  a Server or a ws endpoint URL
 * @param {object} [opts]        Socket options; opts.token is a shortcut for params: {token}
 */
export function openSocket(t, server, opts = {}){
  const {token, connect = true, ...rest} = opts
  const endPoint = typeof server === "string" ? server : server.url
  const socketOpts = {transport: WebSocket, ...rest}
  if(token !== undefined){ socketOpts.params = {token, ...(rest.params || {})} }
  if(process.env.ARMORICORE_E2E_VERBOSE && !socketOpts.logger){
    socketOpts.logger = (kind, msg, data) => console.error(`[phoenix ${kind}] ${msg}`, JSON.stringify(data))
  }
  const socket = new Socket(endPoint, socketOpts)
  // record raw frames and transport events for diagnostics
  socket.frames = []
  socket.transportEvents = []
  socket.onMessage(msg => socket.frames.push(msg))
  socket.onError(e => socket.transportEvents.push(`error ${e?.message || (typeof e === "object" ? e?.type || "event" : e)}`))
  socket.onClose(e => socket.transportEvents.push(`close ${e?.code} ${e?.reason || ""}`.trim()))
  t.after(() => closeSocket(socket))
  if(connect){ socket.connect() }
  return socket
}

/** Disconnects a phoenix socket and resolves once its transport reports closed (max 2 s). */
export function closeSocket(socket){
  return new Promise(resolve => {
    const timer = setTimeout(resolve, 2000)
    socket.disconnect(() => { clearTimeout(timer); resolve() })
  })
}

/** Polls predicate every 20 ms until it returns truthy; rejects after ms with msg (string or fn). */
export async function waitFor(predicate, ms = 5000, msg = "condition"){
  const deadline = Date.now() + ms
  let lastErr
  for(;;){
    try {
      const v = await predicate()
      if(v){ return v }
    } catch(e){ lastErr = e }
    if(Date.now() > deadline){
      const text = typeof msg === "function" ? msg() : msg
      throw new Error(`timed out after ${ms} ms waiting for ${text}` + (lastErr ? ` (last error: ${lastErr.message})` : ""))
    }
    await new Promise(r => setTimeout(r, 20))
  }
}

function describeFrames(channelOrSocket){
  const socket = channelOrSocket.socket || channelOrSocket
  const frames = (socket.frames || []).slice(-15)
  const events = (socket.transportEvents || []).slice(-10)
  return (frames.length ? `\nlast frames received on the socket:\n${frames.map(f => "  " + JSON.stringify(f)).join("\n")}` : "\n(no frames received on the socket)") +
    (events.length ? `\ntransport events: ${events.join("; ")}` : "")
}

/**
 * Resolves with the reply of a Push for `status` ("ok" by default); rejects on any other
 * status or on timeout, with the reply and recent frames in the message.
 */
export function awaitReply(push, status = "ok", ms = 5000){
  const channel = push.channel
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`no "${status}" reply to ${push.event} on ${channel.topic} within ${ms} ms${describeFrames(channel)}`))
    }, ms)
    for(const s of ["ok", "error", "timeout"]){
      push.receive(s, resp => {
        clearTimeout(timer)
        if(s === status){ resolve(resp) } else {
          reject(new Error(`expected "${status}" reply to ${push.event} on ${channel.topic}, got "${s}": ${JSON.stringify(resp)}${describeFrames(channel)}`))
        }
      })
    }
  })
}

/** channel.join() and wait for "ok" (or `status`). */
export function join(channel, status = "ok", ms = 5000){
  return awaitReply(channel.join(), status, ms)
}

/** channel.push(event, payload) and wait for "ok" (or `status`). */
export function push(channel, event, payload, status = "ok", ms = 5000){
  return awaitReply(channel.push(event, payload), status, ms)
}

/**
 * Records every `event` on the channel. `collector.next(pred, ms)` resolves with the first
 * recorded (or future) payload matching pred that was not yet returned by next().
 */
export function collect(channel, event){
  const seen = []
  let cursor = 0
  channel.on(event, payload => seen.push(payload))
  return {
    all: seen,
    async next(pred = () => true, ms = 5000){
      let found
      await waitFor(() => {
        for(let i = cursor; i < seen.length; i++){
          if(pred(seen[i])){ found = seen[i]; cursor = i + 1; return true }
        }
        return false
      }, ms, () => `"${event}" on ${channel.topic} (got so far: ${JSON.stringify(seen)})${describeFrames(channel)}`)
      return found
    },
  }
}

/** Resolves with a port that nothing listens on (bound and released). */
export function closedPort(){
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const {port} = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

export const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/
