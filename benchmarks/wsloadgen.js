// Load generator for Responses over WebSocket (benchmarks/run.py's ws_* scenarios).
// Node 20 needs --experimental-websocket for its WebSocket (undici's, which takes headers).
// node --experimental-websocket wsloadgen.js '{"url":"ws://.../v1/responses", "body":{...},
//     "headers":{...}, "concurrency":64, "seconds":10, "requests":0}'
// It opens `concurrency` sockets first and prints {"ready": N} (N sockets open), so the
// caller can tell the handshakes' cost from the turns'; then each socket sends one
// response.create at a time (the body plus "type":"response.create") and reads its frames
// up to the terminal event, then the next, for `seconds`. Last it prints one JSON line, the
// same fields as loadgen.js: requests (turns), errors, rps, latency p50/p90/p99 and ttfb
// p50/p99 (ms, from sending the message), frames, bytes.
// With "chain": {"turns": K, "input": [...]}, a socket follows each full turn with K turns
// that send only `input` and the previous_response_id of the turn before (the way the
// Codex CLI continues a conversation on its socket), then starts over with a full one.
"use strict";

const cfg = JSON.parse(process.argv[2]);
const message = JSON.stringify({ type: "response.create", ...cfg.body });
const chain = cfg.chain || null;
const chained = (id) => JSON.stringify({ type: "response.create", ...cfg.body,
  previous_response_id: id, input: chain.input });
let deadline = 0;
const maxRequests = cfg.requests || Infinity;
const TERMINAL = new Set(["response.completed", "response.incomplete", "response.failed", "error"]);
let started = 0, done = 0, errors = 0, frames = 0, bytes = 0;
const latencies = [], ttfbs = [], statuses = {};

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: cfg.headers || {} });
    ws.onopen = () => resolve(ws);
    ws.onerror = (e) => reject(new Error(e.message || "websocket error"));
  });
}

async function connect() {
  try {
    return await open();
  } catch (e) {
    errors++;
    return null;
  }
}

async function worker(ws) {
  if (!ws) return;
  let turn = null; // { t0, first, resolve }
  let lastId = null, inChain = 0;
  ws.onmessage = (ev) => {
    if (!turn) return;
    const now = process.hrtime.bigint();
    if (turn.first === null) turn.first = now;
    frames++;
    bytes += ev.data.length;
    // Only the frame's type is needed: it is the first key of every event.
    const type = ev.data.slice(9, ev.data.indexOf('"', 9));
    if (TERMINAL.has(type)) {
      statuses[type] = (statuses[type] || 0) + 1;
      if (chain) lastId = type === "response.completed" ? JSON.parse(ev.data).response.id : null;
      if (type !== "response.completed") errors++;
      latencies.push(Number(now - turn.t0) / 1e6);
      ttfbs.push(Number(turn.first - turn.t0) / 1e6);
      const r = turn.resolve;
      turn = null;
      done++;
      r();
    }
  };
  let closed = false;
  ws.onclose = () => {
    closed = true;
    if (turn) { // the server closed mid-turn
      errors++;
      done++;
      const r = turn.resolve;
      turn = null;
      r();
    }
  };
  while (!closed && Date.now() < deadline && started < maxRequests) {
    started++;
    await new Promise((resolve) => {
      turn = { t0: process.hrtime.bigint(), first: null, resolve };
      if (chain && lastId && inChain < chain.turns) {
        inChain++;
        ws.send(chained(lastId));
      } else {
        inChain = 0;
        ws.send(message);
      }
    });
  }
  ws.close();
}

function pct(values, p) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return +sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))].toFixed(3);
}

(async () => {
  const sockets = await Promise.all(Array.from({ length: cfg.concurrency }, connect));
  console.log(JSON.stringify({ ready: sockets.filter((ws) => ws).length }));
  const t0 = Date.now();
  deadline = t0 + (cfg.seconds || 10) * 1000;
  await Promise.all(sockets.map(worker));
  const elapsed = (Date.now() - t0) / 1000;
  console.log(JSON.stringify({
    requests: done, errors, seconds: +elapsed.toFixed(3), rps: +(done / elapsed).toFixed(1),
    p50_ms: pct(latencies, 50), p90_ms: pct(latencies, 90), p99_ms: pct(latencies, 99),
    ttfb_p50_ms: pct(ttfbs, 50), ttfb_p99_ms: pct(ttfbs, 99),
    frames, frames_per_s: +(frames / elapsed).toFixed(1), bytes, statuses,
  }));
})();
