/* Turnpike portal: live usage events over the tenant's WebSocket (/ws/portal/live/).

   Any page may include this file; it connects once per page and re-connects with back-off.
   It fires DOM events on `document`:
     "turnpike:usage"       detail = {type: "usage", tenant, count, totals, rows: [...]}
                            (one per batch of usage rows written; see portal/live.py)
     "turnpike:live-state"  detail = {state: "open" | "closed" | "unavailable"}
   and elements with [data-live-status] get the state's text from #dashboard-i18n or their
   own data-live / data-offline / data-unavailable attributes.
   Use: document.addEventListener("turnpike:usage", function (e) { ... e.detail.rows ... });
   window.TurnpikeLive.connect() is called on load; TurnpikeLive.state() tells the state. */
(function () {
  "use strict";
  if (window.TurnpikeLive) { return; }
  var socket = null;
  var failures = 0;
  var state = "idle";

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  function text(el, key) {
    var words = document.getElementById("dashboard-i18n");
    return el.getAttribute("data-" + key) || (words && words.getAttribute("data-" + key)) || "";
  }

  function setState(next) {
    state = next;
    var key = next === "open" ? "live" : (next === "unavailable" ? "unavailable" : "offline");
    document.querySelectorAll("[data-live-status]").forEach(function (el) {
      var words = text(el, key);
      if (words) { el.textContent = words; }
    });
    emit("turnpike:live-state", { state: next });
  }

  function schedule() {
    failures += 1;
    if (failures >= 5) { setState("unavailable"); }
    var delay = Math.min(30000, 1000 * Math.pow(2, Math.min(failures, 5)));
    window.setTimeout(connect, delay);
  }

  function connect() {
    if (socket || !("WebSocket" in window)) { return; }
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + "/ws/portal/live/");
    } catch (err) {
      socket = null;
      schedule();
      return;
    }
    socket.addEventListener("open", function () { failures = 0; setState("open"); });
    socket.addEventListener("message", function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (err) { return; }
      if (msg && msg.type === "usage") { emit("turnpike:usage", msg); }
    });
    socket.addEventListener("close", function () {
      socket = null;
      if (state === "open") { setState("closed"); }
      schedule();
    });
  }

  window.TurnpikeLive = { connect: connect, state: function () { return state; } };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
}());
