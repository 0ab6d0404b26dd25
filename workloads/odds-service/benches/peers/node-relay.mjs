// Node.js peer relay for ws-load: Redis pub/sub -> the `ws` library, a set of sockets per
// event and one `send` per subscriber and update (how `ws` relays are usually written).
// Speaks the part of odds-service's protocol ws-load uses: subscribe -> subscribed, a snapshot
// per market (Redis GET), then `odds` frames; ping -> pong. Ops: /readyz once subscribed,
// /metrics empty.
import http from "node:http";
import { WebSocketServer } from "ws";
import { subscribe, commands, config, eventOf } from "./resp.mjs";

const redis = commands(config.redis);
const followers = new Map();
let ready = false;

const server = http.createServer((_, res) => res.writeHead(404).end("not found"));
const wss = new WebSocketServer({ server, path: "/ws/odds", perMessageDeflate: false });
wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", async (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.type === "ping") return ws.send('{"type":"pong"}');
    const event = msg.eventId;
    if (msg.type === "unsubscribe") {
      followers.get(event)?.delete(ws);
      mine.delete(event);
      return ws.send(JSON.stringify({ type: "unsubscribed", eventId: event }));
    }
    if (msg.type !== "subscribe") return;
    // Follow first, then read the snapshot, so no update falls in between (as odds-service
    // does); without a per-client version guard, an update published during the read can
    // then arrive before an older snapshot.
    if (!followers.has(event)) followers.set(event, new Set());
    followers.get(event).add(ws);
    mine.add(event);
    ws.send(JSON.stringify({ type: "subscribed", eventId: event }));
    for (const market of config.markets) {
      const json = await redis.get(config.currentKey(event, market));
      if (json) ws.send(`{"type":"snapshot","data":${json}}`);
    }
  });
  ws.on("close", () => {
    for (const event of mine) followers.get(event)?.delete(ws);
  });
});
server.listen(config.listen.port, config.listen.host);

http
  .createServer((req, res) => {
    if (req.url === "/readyz") return res.writeHead(ready ? 200 : 503).end(ready ? "ok" : "not ready");
    if (req.url === "/metrics") return res.writeHead(200).end("");
    res.writeHead(404).end("not found");
  })
  .listen(config.ops.port, config.ops.host);

await subscribe(config.redis, config.updates, (json) => {
  const sockets = followers.get(eventOf(json));
  if (!sockets) return;
  const frame = `{"type":"odds","data":${json}}`;
  for (const ws of sockets) ws.send(frame);
});
ready = true;
