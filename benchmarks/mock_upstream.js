// A fast mock LLM upstream for benchmarks (Node's http, no dependencies), so the mock is
// never the bottleneck the way a Python one could be. OpenAI Chat Completions and Responses,
// JSON or SSE; the stream is shaped by headers or by the request body:
//   "stream": true            SSE instead of JSON
//   x-mock-chunks / [[mock chunks=N]]   content chunks (default 100 when streaming)
//   x-mock-delay-ms / [[mock delay=MS]]  pause between chunks (paced streams)
//   [[mock hold=MS]]          wait before answering (idle streams)
//   x-mock-fault / [[mock fault=F]]     an injected fault (benchmarks/soak.py):
//       500, 503      that status with an OpenAI error body
//       429           429 with retry-after-ms: 1 (the credential cools for a millisecond,
//                     so one injected 429 does not refuse everyone else's requests)
//       cut           the body starts, then the connection is dropped (a stream after 5
//                     frames, JSON half-way)
//       hang          the body starts, then nothing for hang=MS (default 5000), then the
//                     connection is dropped: an upstream that stalls past the idle timeout
// GET /_mock/stats: requests seen and faults served, by kind.
// Usage: node mock_upstream.js PORT
"use strict";
const http = require("http");

const port = parseInt(process.argv[2] || "9901", 10);
const directive = /\[\[mock ([^\]]*)\]\]/;

function options(req, raw) {
  const opts = { chunks: 100, delay: 0, hold: 0, hang: 5000, fault: "" };
  if (req.headers["x-mock-chunks"]) opts.chunks = +req.headers["x-mock-chunks"];
  if (req.headers["x-mock-delay-ms"]) opts.delay = +req.headers["x-mock-delay-ms"];
  if (req.headers["x-mock-fault"]) opts.fault = req.headers["x-mock-fault"];
  const m = directive.exec(raw);
  if (m) {
    for (const pair of m[1].split(/\s+/)) {
      const [k, v] = pair.split("=");
      if (k === "fault") opts.fault = v;
      else if (k in opts) opts[k] = +v;
    }
  }
  return opts;
}

const usageChat = { prompt_tokens: 10, completion_tokens: 100, total_tokens: 110,
  prompt_tokens_details: { cached_tokens: 0 }, completion_tokens_details: { reasoning_tokens: 0 } };
const usageResp = { input_tokens: 10, input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
  output_tokens: 100, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 110 };

function chatJson(model) {
  return JSON.stringify({ id: "chatcmpl-mock", object: "chat.completion", created: 1700000000,
    model, choices: [{ index: 0, finish_reason: "stop", logprobs: null,
      message: { role: "assistant", content: "Hello from the mock.", refusal: null } }],
    usage: usageChat });
}

// Response ids are unique, as a real upstream's are (Turnpike stores responses by id).
let responses = 0;
const responseId = () => `resp_mock_${process.pid}_${++responses}`;

function respJson(model) {
  return JSON.stringify({ id: responseId(), object: "response", created_at: 1700000000,
    status: "completed", model, output: [{ id: "msg_mock", type: "message", status: "completed",
      role: "assistant", content: [{ type: "output_text", text: "Hello from the mock.",
        annotations: [], logprobs: [] }] }], usage: usageResp });
}

function* chatFrames(model, n) {
  const head = `{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":${JSON.stringify(model)},"choices":[{"index":0,"delta":`;
  yield `data: ${head}{"role":"assistant","content":""},"finish_reason":null}]}\n\n`;
  for (let i = 0; i < n; i++) yield `data: ${head}{"content":"tok${i} "},"finish_reason":null}]}\n\n`;
  yield `data: ${head}{},"finish_reason":"stop"}]}\n\n`;
  yield `data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":${JSON.stringify(model)},"choices":[],"usage":${JSON.stringify(usageChat)}}\n\n`;
  yield "data: [DONE]\n\n";
}

function* responsesFrames(model, n) {
  let seq = 0;
  const ev = (type, body) => `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...body })}\n\n`;
  const base = { id: responseId(), object: "response", created_at: 1700000000, model, output: [] };
  yield ev("response.created", { response: { ...base, status: "in_progress" } });
  yield ev("response.in_progress", { response: { ...base, status: "in_progress" } });
  yield ev("response.output_item.added", { output_index: 0, item: { id: "msg_mock", type: "message", status: "in_progress", role: "assistant", content: [] } });
  yield ev("response.content_part.added", { item_id: "msg_mock", output_index: 0, content_index: 0, part: { type: "output_text", text: "", annotations: [], logprobs: [] } });
  let text = "";
  for (let i = 0; i < n; i++) {
    const delta = `tok${i} `;
    text += delta;
    yield ev("response.output_text.delta", { item_id: "msg_mock", output_index: 0, content_index: 0, delta, logprobs: [] });
  }
  const part = { type: "output_text", text, annotations: [], logprobs: [] };
  yield ev("response.output_text.done", { item_id: "msg_mock", output_index: 0, content_index: 0, text, logprobs: [] });
  yield ev("response.content_part.done", { item_id: "msg_mock", output_index: 0, content_index: 0, part });
  const item = { id: "msg_mock", type: "message", status: "completed", role: "assistant", content: [part] };
  yield ev("response.output_item.done", { output_index: 0, item });
  yield ev("response.completed", { response: { ...base, status: "completed", output: [item], usage: usageResp } });
}

function sendStream(res, frames, delay) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  const it = frames[Symbol.iterator]();
  if (!delay) {
    // Unpaced: write everything at once (one write per frame, like a fast upstream).
    for (const f of it) res.write(f);
    res.end();
    return;
  }
  const tick = () => {
    const next = it.next();
    if (next.done) return res.end();
    res.write(next.value);
    setTimeout(tick, delay);
  };
  tick();
}

const stats = { requests: 0, faults: {} };

function statusFault(res, status) {
  const payload = JSON.stringify({ error: { message: `mock upstream fault ${status}`,
    type: status === 429 ? "rate_limit_error" : "server_error", param: null, code: null } });
  const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(payload) };
  if (status === 429) headers["retry-after-ms"] = "1";
  res.writeHead(status, headers);
  res.end(payload);
}

// The body starts (headers and part of it), then the connection is dropped at once ("cut")
// or after a silence ("hang").
function brokenBody(req, res, opts, stream, frames, payload) {
  const drop = () => { req.socket.destroy(); };
  if (stream) {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    let i = 0;
    for (const f of frames) { if (i++ >= 5) break; res.write(f); }
  } else {
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
    if (opts.fault === "cut") res.write(payload.slice(0, payload.length >> 1)); else res.flushHeaders();
  }
  if (opts.fault === "cut") return setImmediate(drop);
  const timer = setTimeout(drop, opts.hang);
  req.socket.once("close", () => clearTimeout(timer));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    if (req.url === "/_mock/stats") {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(stats));
    }
    if (req.method === "GET") {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end('{"object":"list","data":[{"id":"bench-model","object":"model","created":0,"owned_by":"mock"}]}');
    }
    const raw = Buffer.concat(chunks).toString();
    let body = {};
    try { body = JSON.parse(raw); } catch (e) { /* benchmarks send JSON */ }
    const model = body.model || "bench-model";
    const opts = options(req, raw);
    const responses = req.url.endsWith("/responses");
    stats.requests++;
    if (opts.fault) stats.faults[opts.fault] = (stats.faults[opts.fault] || 0) + 1;
    const answer = () => {
      if (opts.fault === "500" || opts.fault === "503" || opts.fault === "429") {
        return statusFault(res, +opts.fault);
      }
      if (opts.fault === "cut" || opts.fault === "hang") {
        const frames = body.stream ? (responses ? responsesFrames(model, opts.chunks) : chatFrames(model, opts.chunks)) : null;
        return brokenBody(req, res, opts, body.stream, frames, responses ? respJson(model) : chatJson(model));
      }
      if (body.stream) {
        const frames = responses ? responsesFrames(model, opts.chunks) : chatFrames(model, opts.chunks);
        return sendStream(res, frames, opts.delay);
      }
      const payload = responses ? respJson(model) : chatJson(model);
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
      res.end(payload);
    };
    if (opts.hold) setTimeout(answer, opts.hold); else answer();
  });
});
server.keepAliveTimeout = 120000;
server.listen(port, "127.0.0.1", () => console.log(`mock upstream listening on http://127.0.0.1:${port}`));
