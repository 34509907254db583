// Quickstart: "test this key" makes one real request to this server's /v1 API with the
// pasted key and shows the answer, the HTTP status and the latency.
"use strict";

(() => {
  const form = document.getElementById("key-test");
  if (!form) return;
  const result = document.getElementById("test-result");
  const status = document.getElementById("test-status");
  const latency = document.getElementById("test-latency");
  const answer = document.getElementById("test-answer");

  const textOf = (endpoint, data) => {
    if (!data || typeof data !== "object") return "";
    if (data.error) return data.error.message || JSON.stringify(data.error);
    if (endpoint === "chat") {
      const choice = (data.choices || [])[0];
      return choice && choice.message ? (choice.message.content || "") : "";
    }
    if (typeof data.output_text === "string") return data.output_text;
    const parts = [];
    for (const item of data.output || []) {
      for (const part of item.content || []) {
        if (part.type === "output_text" && part.text) parts.push(part.text);
      }
    }
    return parts.join("");
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = window.TurnpikeKey ? window.TurnpikeKey.get() : "";
    answer.hidden = false;
    if (!key) {
      result.hidden = true;
      answer.textContent = form.dataset.noKey;
      document.getElementById("key-secret").focus();
      return;
    }
    const model = form.elements.model.value;
    const endpoint = form.elements.endpoint.value;
    const prompt = form.elements.prompt.value || "Hello";
    const body = endpoint === "chat"
      ? { model, messages: [{ role: "user", content: prompt }] }
      : { model, input: prompt };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    answer.textContent = "…";
    const started = performance.now();
    try {
      const response = await fetch(endpoint === "chat" ? "/v1/chat/completions" : "/v1/responses", {
        method: "POST",
        headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
        body: JSON.stringify(body),
        credentials: "omit",
      });
      const raw = await response.text();
      const elapsed = Math.round(performance.now() - started);
      let data = null;
      try { data = JSON.parse(raw); } catch { /* not JSON: show it raw */ }
      result.hidden = false;
      status.textContent = String(response.status);
      latency.textContent = (form.dataset.ms || "{ms} ms").replace("{ms}", String(elapsed));
      answer.textContent = (data ? textOf(endpoint, data) : raw) || raw;
    } catch (error) {
      result.hidden = true;
      answer.textContent = form.dataset.failed + " " + error;
    } finally {
      button.disabled = false;
    }
  });
})();
