// A minimal Redis (RESP2) client for the peer relays: one connection in subscriber mode for
// the updates channel, one for GETs. Written here so the relays depend on nothing but the
// runtime and its WebSocket library (Bun and Node both run it through `node:net`).
import net from "node:net";

/** Parses one RESP value at `offset`; returns [value, next] or null when incomplete. */
function parse(buf, offset) {
  if (offset >= buf.length) return null;
  const lineEnd = buf.indexOf("\r\n", offset);
  if (lineEnd < 0) return null;
  const kind = String.fromCharCode(buf[offset]);
  const head = buf.toString("utf8", offset + 1, lineEnd);
  const after = lineEnd + 2;
  switch (kind) {
    case "+":
      return [head, after];
    case "-":
      return [new Error(head), after];
    case ":":
      return [Number(head), after];
    case "$": {
      const len = Number(head);
      if (len < 0) return [null, after];
      if (buf.length < after + len + 2) return null;
      return [buf.toString("utf8", after, after + len), after + len + 2];
    }
    case "*": {
      const len = Number(head);
      if (len < 0) return [null, after];
      const items = [];
      let at = after;
      for (let i = 0; i < len; i++) {
        const item = parse(buf, at);
        if (item === null) return null;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`bad RESP type byte ${kind}`);
  }
}

function encode(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return out;
}

function connect(url, onValue) {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port || 6379), hostname || "127.0.0.1");
  socket.setNoDelay(true);
  let pending = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let at = 0;
    for (;;) {
      const value = parse(pending, at);
      if (value === null) break;
      onValue(value[0]);
      at = value[1];
    }
    pending = pending.subarray(at);
  });
  socket.on("error", (e) => {
    console.error(`redis: ${e.message}`);
    process.exit(1);
  });
  socket.on("close", () => {
    console.error("redis: connection closed");
    process.exit(1);
  });
  return socket;
}

/** Subscribes to `channel`; `onMessage(payload)` per message; resolves once subscribed. */
export function subscribe(url, channel, onMessage) {
  return new Promise((resolve) => {
    const socket = connect(url, (value) => {
      if (!Array.isArray(value)) return;
      if (value[0] === "message") onMessage(value[2]);
      else if (value[0] === "subscribe") resolve();
    });
    socket.write(encode(["SUBSCRIBE", channel]));
  });
}

/** A command connection: `get(key)` resolves with the value or null. */
export function commands(url) {
  const waiting = [];
  const socket = connect(url, (value) => waiting.shift()?.(value));
  return {
    get(key) {
      return new Promise((resolve) => {
        waiting.push(resolve);
        socket.write(encode(["GET", key]));
      });
    },
  };
}

/** What both relays share: addresses from the environment ws-load gives the service. */
export const config = {
  listen: splitAddr(process.env.LISTEN_ADDR ?? "127.0.0.1:8080"),
  ops: splitAddr(process.env.HTTP_ADDR ?? "127.0.0.1:9090"),
  redis: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
  updates: "odds:updates",
  markets: ["1X2", "HT_1X2"],
  currentKey: (event, market) => `odds:current:${event}:${market}`,
};

function splitAddr(addr) {
  const at = addr.lastIndexOf(":");
  return { host: addr.slice(0, at), port: Number(addr.slice(at + 1)) };
}

/** The event id of an update's JSON, without parsing the rest. */
export function eventOf(json) {
  return JSON.parse(json).event_id;
}
