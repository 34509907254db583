// Usage log: live rows. No inline script (CSP); loaded with defer by portal/usage/log.html.
//
// Hook for the live socket (/ws/portal/live/, built with the dashboard): when a usage row
// arrives, either call `window.TurnpikeLive.on("usage", fn)` if that global exists, or
// dispatch `document.dispatchEvent(new CustomEvent("turnpike:usage", {detail: row}))`.
// `row` is `portal.selectors.usage.live_row(log)`: request_id, created_at (ISO), key, model,
// endpoint, status, error_code, status_class, stream, the four token counts, cost, latency_ms, ttfb_ms.
// Rows are prepended only while the table shows the first page with no filters
// (`data-live="on"`, set by the server); rows are built with textContent, never HTML.
"use strict";

(() => {
  const MAX_ROWS = 50;

  function cell(tr, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    tr.append(td);
    return td;
  }

  function prepend(row) {
    const table = document.getElementById("usage-table");
    if (!table || table.dataset.live !== "on" || !row || !row.request_id) return;
    const body = table.tBodies[0];
    if (body.querySelector(`tr[data-request-id="${CSS.escape(row.request_id)}"]`)) return;
    const tr = document.createElement("tr");
    tr.dataset.requestId = row.request_id;
    tr.className = "live-new";
    const first = cell(tr, "");
    const link = document.createElement("a");
    link.href = table.dataset.detailUrl.replace("REQUEST_ID", encodeURIComponent(row.request_id));
    const time = document.createElement("time");
    time.dateTime = row.created_at;
    const when = new Date(row.created_at);
    const pad = (n) => String(n).padStart(2, "0");
    time.textContent = `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} `
      + `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
    link.append(time);
    first.append(link);
    cell(tr, row.key || "", "mono");
    cell(tr, row.model || "—");
    cell(tr, row.endpoint || "");
    const status = cell(tr, "");
    const badge = document.createElement("span");
    badge.className = "badge " + ({ success: "ok", client_error: "warn" }[row.status_class] || "bad");
    badge.textContent = String(row.status);
    status.append(badge);
    if (row.error_code) status.append(" " + row.error_code);
    cell(tr, row.stream ? table.dataset.yes : table.dataset.no);
    cell(tr, [row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens]
      .join(" / "), "num");
    cell(tr, Number(row.cost).toFixed(6), "num");
    cell(tr, String(row.latency_ms), "num");
    cell(tr, row.ttfb_ms == null ? "—" : String(row.ttfb_ms), "num");
    body.prepend(tr);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  if (window.TurnpikeLive && typeof window.TurnpikeLive.on === "function") {
    window.TurnpikeLive.on("usage", prepend);
  } else {
    document.addEventListener("turnpike:usage", (event) => prepend(event.detail));
  }
  window.TurnpikeUsage = { prepend };
})();
