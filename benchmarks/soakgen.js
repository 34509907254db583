// The soak's load generator (benchmarks/soak.py; Node's http, keep-alive, no dependencies).
// node soakgen.js '{"gateways":[URL,...], "keys":[SECRET,...], "concurrency":32,
//                   "seconds":600, "faultRate":0.01, "chunks":16, "out":PATH, ...}'
//
// `concurrency` closed-loop clients; client i always uses keys[i % keys.length] and sends
// each request to a gateway picked at random. A request is Chat Completions or Responses,
// stream or not, on the passthrough model or the translated one (a Chat-only upstream),
// chosen at random; with probability faultRate it carries an injected fault for the mock
// upstream ([[mock fault=F]] in the prompt), so the client knows which answers should fail.
//
// Every answer is classified:
//   ok                     not injected, 200, complete (stream terminal event, full text)
//   injected               injected, and answered the way that fault should be
//   unexpected:<why>       anything else: a refusal by the limiter (spurious_<code>), an
//                          error or cut stream the client did not inject, an injected fault
//                          answered as a success or with the wrong error, no answer at all
// One line per request goes to `out`: request id (x-request-id; "-" without an answer),
// fault ("-" for none), class, stream (0/1). The last line on stdout is a JSON summary.
"use strict";
const fs = require("fs");
const http = require("http");

const cfg = JSON.parse(process.argv[2]);
const FAULTS = cfg.faults || ["500", "503", "429", "cut", "hang"];
const LIMITER_CODES = new Set(["concurrent_limit", "quota_exceeded", "rate_limit_rpm",
  "rate_limit_rpd", "rate_limit_tpm", "limits_unavailable"]);
const chunks = cfg.chunks || 16;
const timeoutMs = cfg.timeoutMs || 30000;
const models = cfg.models || ["soak-model", "soak-chat-only"];
const translatedShare = cfg.translatedShare ?? 0.3;
const gateways = cfg.gateways.map((u) => {
  const url = new URL(u);
  return { host: url.hostname, port: url.port, base: url.pathname.replace(/\/$/, ""),
    agent: new http.Agent({ keepAlive: true, maxSockets: cfg.concurrency }) };
});
const out = fs.createWriteStream(cfg.out);
const deadline = Date.now() + cfg.seconds * 1000;

const counts = {};        // class -> n
const injectedBy = {};    // fault -> n
const samples = [];       // the first unexpected answers, in detail
const latencies = [];
let requests = 0;

function bump(map, k) { map[k] = (map[k] || 0) + 1; }

function pick(list) { return list[Math.floor(Math.random() * list.length)]; }

function request() {
  const chat = Math.random() < 0.5;
  const stream = Math.random() < 0.5;
  const model = Math.random() < translatedShare ? models[1] : models[0];
  const fault = Math.random() < cfg.faultRate ? pick(FAULTS) : "";
  const prompt = `Say hello. [[mock chunks=${chunks}${fault ? ` fault=${fault}` : ""}]]`;
  const body = chat
    ? { model, stream, messages: [{ role: "user", content: prompt }] }
    : { model, stream, input: prompt };
  const cap = Math.random();  // reservations of different sizes
  if (cap < 0.3) body[chat ? "max_tokens" : "max_output_tokens"] = 256;
  else if (cap < 0.4) body[chat ? "max_tokens" : "max_output_tokens"] = 8192;
  return { path: chat ? "/chat/completions" : "/responses", chat, stream, model, fault,
    body: Buffer.from(JSON.stringify(body)) };
}

function errorCode(text) {
  const m = /"code":\s*"([^"]*)"/.exec(text);
  return m ? m[1] : "none";
}

// What a stream's body says: complete, ended by an error event (and its code), or neither.
function readStream(chat, text) {
  if (chat) {
    const err = /^data: \{"error":/m.exec(text);
    if (err) return { end: "error", code: errorCode(text.slice(err.index)) };
    if (text.includes("data: [DONE]")) return { end: "done" };
    return { end: "truncated" };
  }
  const failed = /^event: (response\.failed|error)$/m.exec(text);
  if (failed) return { end: "error", code: errorCode(text.slice(failed.index)) };
  if (text.includes("event: response.completed")) return { end: "done" };
  return { end: "truncated" };
}

function classify(req, status, text, failure) {
  if (failure) return status ? `unexpected:body_${failure}` : `unexpected:no_answer_${failure}`;
  const expectText = req.stream ? `tok${chunks - 1} ` : "Hello from the mock.";
  if (status !== 200) {
    const code = errorCode(text);
    if (LIMITER_CODES.has(code)) return `unexpected:spurious_${code}`;
    if (!req.fault) return `unexpected:http_${status}_${code}`;
    const good = code !== "internal_error" && (
      (["500", "503", "429"].includes(req.fault) && status === +req.fault) ||
      (["cut", "hang"].includes(req.fault) && (status === 502 || status === 504)));
    return good ? "injected" : `unexpected:fault_${req.fault}_answered_${status}_${code}`;
  }
  if (req.stream) {
    const s = readStream(req.chat, text);
    if (s.end === "done" && !text.includes(expectText)) s.end = "short";
    if (!req.fault) {
      if (s.end === "done") return "ok";
      return s.end === "error" ? `unexpected:stream_error_${s.code}` : `unexpected:stream_${s.end}`;
    }
    if (s.end === "error" && ["cut", "hang"].includes(req.fault) && s.code !== "internal_error") {
      return "injected";
    }
    if (s.end === "done") return `unexpected:fault_${req.fault}_sold_as_success`;
    return `unexpected:fault_${req.fault}_stream_${s.end}${s.code ? "_" + s.code : ""}`;
  }
  let valid = false;
  try { JSON.parse(text); valid = text.includes(expectText); } catch (e) { valid = false; }
  if (req.fault) return valid ? `unexpected:fault_${req.fault}_sold_as_success`
    : `unexpected:fault_${req.fault}_answered_200_bad_body`;
  return valid ? "ok" : "unexpected:bad_body";
}

function one(client) {
  const req = request();
  const gw = Math.floor(Math.random() * gateways.length);
  const g = gateways[gw];
  if (req.fault) bump(injectedBy, req.fault);
  return new Promise((resolve) => {
    const t0 = Date.now();
    let settled = false;
    let timedOut = false;
    const finish = (id, status, text, failure) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (failure && timedOut) failure = "timeout";
      const cls = classify(req, status, text, failure);
      requests++;
      bump(counts, cls);
      latencies.push(Date.now() - t0);
      out.write(`${id || "-"}\t${req.fault || "-"}\t${cls}\t${req.stream ? 1 : 0}\n`);
      if (cls.startsWith("unexpected") && samples.length < 50) {
        samples.push({ class: cls, gateway: gw, path: req.path, stream: req.stream,
          model: req.model, fault: req.fault, status, request_id: id,
          ms: Date.now() - t0, body: text.slice(-400) });
      }
      resolve();
    };
    const r = http.request({ host: g.host, port: g.port, path: g.base + req.path,
      method: "POST", agent: g.agent, headers: { "content-type": "application/json",
        "content-length": req.body.length, authorization: `Bearer ${client.key}` } }, (res) => {
      res.setEncoding("utf8");
      let text = "";
      res.on("data", (c) => { text += c; });
      res.on("end", () => finish(res.headers["x-request-id"], res.statusCode, text, null));
      res.on("error", () => finish(res.headers["x-request-id"], res.statusCode, text, "reset"));
      res.on("aborted", () => finish(res.headers["x-request-id"], res.statusCode, text,
        "aborted"));
      res.on("close", () => finish(res.headers["x-request-id"], res.statusCode, text, "closed"));
    });
    const timer = setTimeout(() => { timedOut = true; r.destroy(new Error("timeout")); },
      timeoutMs);
    r.on("error", (e) => finish(null, 0, "", e.message === "timeout" ? "timeout"
      : (e.code || "error")));
    r.end(req.body);
  });
}

async function client(i) {
  const c = { key: cfg.keys[i % cfg.keys.length] };
  while (Date.now() < deadline) await one(c);
}

function pct(values, p) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))];
}

(async () => {
  const t0 = Date.now();
  await Promise.all(Array.from({ length: cfg.concurrency }, (_, i) => client(i)));
  const elapsed = (Date.now() - t0) / 1000;
  await new Promise((resolve) => out.end(resolve));
  for (const g of gateways) g.agent.destroy();
  console.log(JSON.stringify({
    requests, seconds: +elapsed.toFixed(3), rps: +(requests / elapsed).toFixed(1),
    p50_ms: pct(latencies, 50), p99_ms: pct(latencies, 99), classes: counts,
    injected: injectedBy, samples,
  }));
})();
