// Load generator for the benchmarks (Node's http, keep-alive, no dependencies).
// node loadgen.js '{"url":..., "body":{...}, "headers":{...}, "concurrency":64,
//                   "seconds":10, "requests":0, "stream":false}'
// "urls": [...] instead of "url" spreads the clients over several servers (client i on
// urls[i % n]), e.g. several gateway processes.
// Prints one JSON line: requests, errors, rps, latency p50/p90/p99 (ms), ttfb p50/p99 (ms),
// frames and frames/s (SSE events received), bytes.
"use strict";
const http = require("http");

const cfg = JSON.parse(process.argv[2]);
const urls = (cfg.urls || [cfg.url]).map((u) => new URL(u));
const body = Buffer.from(JSON.stringify(cfg.body));
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.concurrency });
const headers = { "content-type": "application/json", "content-length": body.length, ...(cfg.headers || {}) };
const deadline = Date.now() + (cfg.seconds || 10) * 1000;
const maxRequests = cfg.requests || Infinity;
let started = 0, done = 0, errors = 0, frames = 0, bytes = 0;
const latencies = [], ttfbs = [], statuses = {};

function one(url) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    let first = null;
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers, agent }, (res) => {
      statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
      res.on("data", (chunk) => {
        if (first === null) first = process.hrtime.bigint();
        bytes += chunk.length;
        if (cfg.stream) {
          let i = -1;
          while ((i = chunk.indexOf("\n\n", i + 1)) !== -1) frames++;
        }
      });
      res.on("end", () => {
        const t1 = process.hrtime.bigint();
        if (res.statusCode !== 200) errors++;
        latencies.push(Number(t1 - t0) / 1e6);
        ttfbs.push(Number((first || t1) - t0) / 1e6);
        done++;
        resolve();
      });
    });
    req.on("error", () => { errors++; done++; resolve(); });
    req.end(body);
  });
}

async function worker(_, i) {
  const url = urls[i % urls.length];
  while (Date.now() < deadline && started < maxRequests) {
    started++;
    await one(url);
  }
}

function pct(values, p) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return +sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))].toFixed(3);
}

(async () => {
  const t0 = Date.now();
  await Promise.all(Array.from({ length: cfg.concurrency }, worker));
  const elapsed = (Date.now() - t0) / 1000;
  console.log(JSON.stringify({
    requests: done, errors, seconds: +elapsed.toFixed(3), rps: +(done / elapsed).toFixed(1),
    p50_ms: pct(latencies, 50), p90_ms: pct(latencies, 90), p99_ms: pct(latencies, 99),
    ttfb_p50_ms: pct(ttfbs, 50), ttfb_p99_ms: pct(ttfbs, 99),
    frames, frames_per_s: +(frames / elapsed).toFixed(1), bytes, statuses,
  }));
  agent.destroy();
})();
