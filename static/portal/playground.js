// Playground: multi-turn chat streamed through this server's /v1 API (Responses or Chat
// Completions) with the pasted key; fetch + ReadableStream, SSE parsed here. Each turn
// shows its tokens (from the usage event) and its cost (the x-turnpike-cost header when
// present, else the portal's cost endpoint, which applies the tenant's prices).
"use strict";

(() => {
  const root = document.getElementById("playground");
  if (!root) return;
  const t = root.dataset;
  const form = document.getElementById("pg-form");
  const input = document.getElementById("pg-input");
  const transcript = document.getElementById("pg-transcript");
  const empty = document.getElementById("pg-empty");
  const send = document.getElementById("pg-send");
  const stop = document.getElementById("pg-stop");
  const total = document.getElementById("pg-total");
  let history = [];
  let controller = null;
  let spent = 0;

  // Fill a translated template from a data-* attribute: "{input} input tokens" etc.
  const fmt = (template, values) => template.replace(/\{(\w+)\}/g,
    (whole, name) => (name in values ? String(values[name]) : whole));

  const api = () => document.querySelector("input[name=pg-api]:checked").value;

  const addTurn = (role, text) => {
    const item = document.createElement("li");
    item.className = "turn " + role;
    const who = document.createElement("strong");
    who.textContent = role === "user" ? t.you : t.assistant;
    const body = document.createElement("div");
    body.className = "turn-text";
    body.textContent = text;
    const meta = document.createElement("div");
    meta.className = "muted turn-meta";
    item.append(who, body, meta);
    transcript.append(item);
    empty.hidden = true;
    return { body, meta };
  };

  // Server-sent events from a fetch body: yields {event, data} per block.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  }

  const usageOf = (kind, usage) => {
    if (!usage) return null;
    if (kind === "chat") {
      return {
        input: usage.prompt_tokens || 0,
        cached: (usage.prompt_tokens_details || {}).cached_tokens || 0,
        output: usage.completion_tokens || 0,
        reasoning: (usage.completion_tokens_details || {}).reasoning_tokens || 0,
      };
    }
    return {
      input: usage.input_tokens || 0,
      cached: (usage.input_tokens_details || {}).cached_tokens || 0,
      output: usage.output_tokens || 0,
      reasoning: (usage.output_tokens_details || {}).reasoning_tokens || 0,
    };
  };

  const costOf = async (model, usage, header) => {
    if (header) return header;
    const params = new URLSearchParams({
      input: usage.input, cached: usage.cached, output: usage.output, reasoning: usage.reasoning,
    });
    const keyId = window.TurnpikeKey ? window.TurnpikeKey.id() : "";
    if (keyId) params.set("key", keyId);
    const url = t.costUrl.replace("MODEL", encodeURIComponent(model)) + "?" + params;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return null;
    return (await response.json()).cost;
  };

  const errorText = async (response) => {
    const raw = await response.text();
    try {
      const data = JSON.parse(raw);
      return (data.error && (data.error.message || data.error.code)) || raw;
    } catch { return raw; }
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = window.TurnpikeKey ? window.TurnpikeKey.get() : "";
    const text = input.value.trim();
    if (!text) return;
    if (!key) {
      addTurn("error", t.noKey);
      document.getElementById("key-secret").focus();
      return;
    }
    const kind = api();
    const model = document.getElementById("pg-model").value;
    history.push({ role: "user", content: text });
    addTurn("user", text);
    input.value = "";
    const turn = addTurn("assistant", "");
    const body = kind === "chat"
      ? { model, messages: history, stream: true, stream_options: { include_usage: true } }
      : { model, input: history, stream: true };
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let answer = "";
    let usage = null;
    try {
      const response = await fetch(kind === "chat" ? "/v1/chat/completions" : "/v1/responses", {
        method: "POST",
        headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json",
                   "Accept": "text/event-stream" },
        body: JSON.stringify(body),
        credentials: "omit",
        signal: controller.signal,
      });
      if (!response.ok) {
        turn.body.textContent = fmt(t.errorStatus, {
          status: response.status, message: await errorText(response) });
        history.pop();
        return;
      }
      for await (const { data } of events(response)) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch { continue; }
        if (kind === "chat") {
          const choice = (chunk.choices || [])[0];
          if (choice && choice.delta && choice.delta.content) answer += choice.delta.content;
          if (chunk.usage) usage = usageOf(kind, chunk.usage);
          if (chunk.error) answer += "\n" + t.error + ": " + (chunk.error.message || "");
        } else if (chunk.type === "response.output_text.delta") {
          answer += chunk.delta || "";
        } else if (chunk.type === "response.completed" || chunk.type === "response.incomplete") {
          usage = usageOf(kind, (chunk.response || {}).usage);
        } else if (chunk.type === "error" || chunk.type === "response.failed") {
          const error = chunk.error || (chunk.response || {}).error || {};
          answer += "\n" + t.error + ": " + (error.message || error.code || "");
        }
        turn.body.textContent = answer;
      }
      const elapsed = Math.round(performance.now() - started);
      history.push({ role: "assistant", content: answer });
      if (!usage) {
        turn.meta.textContent = fmt(t.ms, { ms: elapsed }) + " · " + t.noUsage;
        return;
      }
      const cost = await costOf(model, usage, response.headers.get("x-turnpike-cost"));
      if (cost !== null) spent += Number(cost);
      turn.meta.textContent = [
        fmt(t.tokens, usage),
        cost !== null ? fmt(t.cost, { cost }) : "",
        fmt(t.ms, { ms: elapsed }),
      ].filter(Boolean).join(" · ");
      total.textContent = fmt(t.total, { cost: spent.toFixed(6) });
    } catch (error) {
      if (error.name !== "AbortError") turn.meta.textContent = t.error + ": " + error;
      if (answer) history.push({ role: "assistant", content: answer });
      else history.pop();
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  stop.addEventListener("click", () => { if (controller) controller.abort(); });
  document.getElementById("pg-reset").addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    spent = 0;
    transcript.replaceChildren();
    total.textContent = "";
    empty.hidden = false;
  });
})();
