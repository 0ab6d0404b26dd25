// Bun peer relay for ws-load: Redis pub/sub -> `Bun.serve` WebSocket pub/sub, one topic per
// event (uWebSockets' topic tree corks each subscriber's frames for one loop turn). Speaks the
// part of odds-service's protocol ws-load uses: subscribe -> subscribed, a snapshot per market
// (Redis GET), then `odds` frames; ping -> pong. Ops: /readyz once subscribed, /metrics empty.
import { subscribe, commands, config, eventOf } from "./resp.mjs";

const redis = commands(config.redis);
let ready = false;

const server = Bun.serve({
  hostname: config.listen.host,
  port: config.listen.port,
  fetch(req, srv) {
    if (new URL(req.url).pathname === "/ws/odds" && srv.upgrade(req)) return;
    return new Response("not found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    async message(ws, text) {
      const msg = JSON.parse(text);
      if (msg.type === "ping") return ws.send('{"type":"pong"}');
      if (msg.type === "unsubscribe") {
        ws.unsubscribe(msg.eventId);
        return ws.send(JSON.stringify({ type: "unsubscribed", eventId: msg.eventId }));
      }
      if (msg.type !== "subscribe") return;
      const event = msg.eventId;
      // Subscribe first, then read the snapshot, so no update falls in between (as
      // odds-service does); without a per-client version guard, an update published during
      // the read can then arrive before an older snapshot.
      ws.subscribe(event);
      ws.send(JSON.stringify({ type: "subscribed", eventId: event }));
      for (const market of config.markets) {
        const json = await redis.get(config.currentKey(event, market));
        if (json) ws.send(`{"type":"snapshot","data":${json}}`);
      }
    },
  },
});

Bun.serve({
  hostname: config.ops.host,
  port: config.ops.port,
  fetch(req) {
    const path = new URL(req.url).pathname;
    if (path === "/readyz") return new Response(ready ? "ok" : "not ready", { status: ready ? 200 : 503 });
    if (path === "/metrics") return new Response("");
    return new Response("not found", { status: 404 });
  },
});

await subscribe(config.redis, config.updates, (json) => {
  server.publish(eventOf(json), `{"type":"odds","data":${json}}`);
});
ready = true;
