// A minimal Socket.IO 4.8 server, the benchmark peer of armoricore-bench
// (`--protocol socketio`). It does for a room what Armoricore does for a chat
// topic: join (acked), leave (acked), and a broadcast to the room that reaches
// every member, the sender included (acked, like a Phoenix push's phx_reply).
//
// Engine: Socket.IO's default, engine.io's WebSocket transport on the `ws`
// package (engine.io's `wsEngine` defaults to `require("ws").Server`), with
// WebSocket as the only transport (no HTTP long-polling), no CORS, no
// permessage-deflate, 1 MB max message, default heartbeat (the server pings
// every 25 s, the client has 20 s to pong; see PING_INTERVAL_MS below).
//
// Environment:
//   PORT        port on 127.0.0.1 (0 or unset: any free port)
//   JWT_SECRET  when set, tokens must be HS256 JWTs signed with it (see `verify`);
//               when unset, any non-empty token string is accepted.
//   PING_INTERVAL_MS, PING_TIMEOUT_MS  the Engine.IO heartbeat (default 25000,
//               20000, Socket.IO's own defaults); tests shorten them.
//
// Prints one JSON line `{"listening":"127.0.0.1:PORT"}` on stdout once it
// accepts connections, then nothing per connection or message. SIGTERM or
// SIGINT: closes every connection and the listener, exits 0.

import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const SECRET = process.env.JWT_SECRET || "";
// jsonwebtoken's (and so Armoricore's) default leeway for `exp`.
const LEEWAY_S = 60;

/**
 * The user a token names, or null when it is refused.
 *
 * Without JWT_SECRET: any non-empty string is accepted (and is the user).
 * With JWT_SECRET, as Armoricore checks its tokens: three base64url parts; the
 * header's `alg` is "HS256"; the signature is HMAC-SHA256(secret,
 * "header.payload"), compared in constant time; the payload is a JSON object
 * whose `exp`, when present, is not past (60 s leeway), whose `nbf`, when
 * present, is not in the future, and whose `sub` (or `user_id`) is non-empty.
 */
function verify(token) {
  if (typeof token !== "string" || token.length === 0) return null;
  if (!SECRET) return token;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const [h, p, s] = parts;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(h, "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (header?.alg !== "HS256" || claims === null || typeof claims !== "object") return null;
  const expected = createHmac("sha256", SECRET).update(`${h}.${p}`).digest();
  const given = Buffer.from(s, "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const now = Date.now() / 1000;
  if (typeof claims.exp === "number" && claims.exp + LEEWAY_S < now) return null;
  if (typeof claims.nbf === "number" && claims.nbf - LEEWAY_S > now) return null;
  const sub = claims.sub ?? claims.user_id;
  if ((typeof sub !== "string" && typeof sub !== "number") || String(sub).length === 0) return null;
  return String(sub);
}

const OK = { ok: true };
const NOT_A_ROOM = { ok: false, error: "room must be a non-empty string" };
const NOT_JOINED = { ok: false, error: "not a member of the room" };
const BAD_EVENT = { ok: false, error: "event must be a non-reserved string" };

const httpServer = createServer();
const io = new Server(httpServer, {
  path: "/socket.io/",
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
  pingInterval: Number.parseInt(process.env.PING_INTERVAL_MS || "25000", 10),
  pingTimeout: Number.parseInt(process.env.PING_TIMEOUT_MS || "20000", 10),
});

// Authentication at the Socket.IO CONNECT (`40{"token":…}`); a refusal is
// answered with CONNECT_ERROR `44{"message":"unauthorized"}`.
io.use((socket, next) => {
  const user = verify(socket.handshake.auth?.token ?? socket.handshake.query?.token);
  if (user === null) return next(new Error("unauthorized"));
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  // `join` room → ack {ok}
  socket.on("join", (room, ack) => {
    if (typeof room !== "string" || room.length === 0) return reply(ack, NOT_A_ROOM);
    socket.join(room); // synchronous with the default in-memory adapter
    reply(ack, OK);
  });

  // `leave` room → ack {ok}
  socket.on("leave", (room, ack) => {
    if (typeof room !== "string" || room.length === 0) return reply(ack, NOT_A_ROOM);
    socket.leave(room);
    reply(ack, OK);
  });

  // `broadcast` {room, event, payload} → every member of room (sender included)
  // gets `event` with `payload`; ack {ok}. Like a Phoenix push, only members
  // of the room may broadcast to it.
  socket.on("broadcast", (msg, ack) => {
    const room = msg?.room;
    const event = msg?.event;
    if (typeof room !== "string" || room.length === 0) return reply(ack, NOT_A_ROOM);
    if (!socket.rooms.has(room)) return reply(ack, NOT_JOINED);
    if (typeof event !== "string") return reply(ack, BAD_EVENT);
    try {
      io.to(room).emit(event, msg.payload);
    } catch {
      // a reserved event name ("connect", "disconnect", …)
      return reply(ack, BAD_EVENT);
    }
    reply(ack, OK);
  });
});

function reply(ack, value) {
  if (typeof ack === "function") ack(value);
}

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  // io.close() disconnects every socket and closes the HTTP server.
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

const port = Number.parseInt(process.env.PORT || "0", 10);
httpServer.listen(port, "127.0.0.1", 4096, () => {
  const { address, port: bound } = httpServer.address();
  process.stdout.write(`${JSON.stringify({ listening: `${address}:${bound}` })}\n`);
});
