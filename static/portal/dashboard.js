/* Turnpike portal: the dashboard's and a key's usage charts (Chart.js, vendored), drawn from
   the page's #dashboard-data (json_script), and bumped by live usage events (live.js). */
(function () {
  "use strict";
  if (window.TurnpikeDashboard) { return; }
  window.TurnpikeDashboard = true;

  function start() {
    var dataEl = document.getElementById("dashboard-data");
    if (!dataEl || !window.Chart) { return; }
    var data = JSON.parse(dataEl.textContent);
    var words = document.getElementById("dashboard-i18n") || document.body;
    var lang = document.documentElement.lang || undefined;
    var css = getComputedStyle(document.documentElement);
    var accent = css.getPropertyValue("--accent").trim() || "#1f5fbf";
    var muted = css.getPropertyValue("--muted").trim() || "#4d5566";
    var line = css.getPropertyValue("--line").trim() || "#d5d9e0";
    var text = css.getPropertyValue("--text").trim() || "#1b2230";
    var ok = css.getPropertyValue("--ok").trim() || "#1d6b35";
    var palette = [accent, ok, css.getPropertyValue("--warn").trim() || "#8a5a00",
      css.getPropertyValue("--bad").trim() || "#b0262b", muted, "#7a4fbf", "#1a8a8a",
      "#c2571a", "#5a7d1a", "#a33a7a"];
    Chart.defaults.color = text;
    Chart.defaults.borderColor = line;
    Chart.defaults.font.family = css.fontFamily || undefined;

    var money = new Intl.NumberFormat(lang, { maximumFractionDigits: 4 });
    var count = new Intl.NumberFormat(lang);
    var dayFmt = new Intl.DateTimeFormat(lang, { month: "short", day: "numeric" });
    var hourFmt = new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit" });
    var spend = words.getAttribute("data-spend") || "Spend";
    var requests = words.getAttribute("data-requests") || "Requests";
    var charts = {};

    function dayLabel(iso) { return dayFmt.format(new Date(iso + "T12:00:00")); }
    function hourLabel(iso) { return hourFmt.format(new Date(iso)); }

    function combo(id, labels, costs, reqs) {
      var canvas = document.getElementById(id);
      if (!canvas) { return null; }
      return new Chart(canvas, {
        data: {
          labels: labels,
          datasets: [
            { type: "bar", label: requests, data: reqs, yAxisID: "y1",
              backgroundColor: line, borderColor: muted, borderWidth: 1 },
            { type: "line", label: spend, data: costs, yAxisID: "y",
              borderColor: accent, backgroundColor: accent, tension: 0.25, pointRadius: 2 }
          ]
        },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            y: { position: "left", beginAtZero: true, title: { display: true, text: spend },
                 ticks: { callback: function (v) { return money.format(v); } } },
            y1: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
                  title: { display: true, text: requests },
                  ticks: { precision: 0, callback: function (v) { return count.format(v); } } }
          }
        }
      });
    }

    charts.days = combo("chart-days", data.days.map(dayLabel), data.day_cost, data.day_requests);
    charts.hours = combo("chart-hours", data.hours.map(hourLabel), data.hour_cost,
                         data.hour_requests);
    var modelsCanvas = document.getElementById("chart-models");
    if (modelsCanvas) {
      charts.models = new Chart(modelsCanvas, {
        type: "doughnut",
        data: {
          labels: data.models.map(function (m) { return m.model; }),
          datasets: [{ label: spend, data: data.models.map(function (m) { return m.cost; }),
                       backgroundColor: palette }]
        },
        options: { responsive: true, maintainAspectRatio: false, animation: false,
                   plugins: { legend: { position: "bottom" } } }
      });
    }
    var keysCanvas = document.getElementById("chart-keys");
    if (keysCanvas) {
      charts.keys = new Chart(keysCanvas, {
        type: "bar",
        data: {
          labels: data.keys.map(function (k) { return k.name; }),
          datasets: [{ label: spend, data: data.keys.map(function (k) { return k.cost; }),
                       backgroundColor: accent }]
        },
        options: { indexAxis: "y", responsive: true, maintainAspectRatio: false,
                   animation: false, plugins: { legend: { display: false } },
                   scales: { x: { beginAtZero: true,
                                  ticks: { callback: function (v) { return money.format(v); } } } } }
      });
    }

    /* --- live --------------------------------------------------------------------------- */
    var today = data.today;
    var month = data.month_cost;
    var bounds = data.bounds;

    function median(buckets) {
      var total = buckets.reduce(function (a, b) { return a + b; }, 0);
      if (!total) { return null; }
      var middle = total / 2, seen = 0;
      for (var i = 0; i < buckets.length; i += 1) {
        if (buckets[i] && seen + buckets[i] >= middle) {
          if (i >= bounds.length) { return bounds[bounds.length - 1]; }
          var lo = i === 0 ? 0 : bounds[i - 1], hi = bounds[i];
          return Math.round(lo + (hi - lo) * (middle - seen) / buckets[i]);
        }
        seen += buckets[i];
      }
      return bounds[bounds.length - 1];
    }
    function bucket(ms) {
      for (var i = 0; i < bounds.length; i += 1) { if (ms < bounds[i]) { return i; } }
      return bounds.length;
    }
    function setKpi(name, value) {
      document.querySelectorAll('[data-kpi="' + name + '"]').forEach(function (el) {
        el.textContent = value;
      });
    }
    function render() {
      setKpi("requests", count.format(today.requests));
      ["input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"].forEach(function (n) {
        setKpi(n, count.format(today[n]));
      });
      setKpi("cost", money.format(today.cost));
      setKpi("month_cost", money.format(month));
      setKpi("error_rate", today.requests ?
        new Intl.NumberFormat(lang, { maximumFractionDigits: 1 }).format(
          100 * today.errors / today.requests) + " %" : "–");
      var lat = median(today.lat), ttfb = median(today.ttfb);
      setKpi("median_latency", lat === null ? "–" : count.format(lat) + " ms");
      setKpi("median_ttfb", ttfb === null ? "–" : count.format(ttfb) + " ms");
    }
    function addToHour(row, cost) {
      if (!charts.hours) { return; }
      var at = new Date(row.created_at);
      at.setMinutes(0, 0, 0);
      var label = hourLabel(at.toISOString());
      var labels = charts.hours.data.labels;
      var i = labels.indexOf(label);
      if (i < 0) {
        labels.push(label);
        charts.hours.data.datasets[0].data.push(0);
        charts.hours.data.datasets[1].data.push(0);
        i = labels.length - 1;
      }
      charts.hours.data.datasets[0].data[i] += 1;
      charts.hours.data.datasets[1].data[i] += cost;
    }
    function addToList(chart, label, cost, match) {
      if (!chart) { return; }
      var labels = chart.data.labels, i = -1;
      for (var j = 0; j < labels.length; j += 1) { if (match(j)) { i = j; break; } }
      if (i < 0) {
        if (!label) { return; }
        labels.push(label);
        chart.data.datasets[0].data.push(0);
        i = labels.length - 1;
      }
      chart.data.datasets[0].data[i] += cost;
    }
    var feed = document.querySelector("[data-live-feed]");
    function addToFeed(row) {
      if (!feed) { return; }
      var placeholder = feed.querySelector("li.muted");
      if (placeholder) { placeholder.remove(); }
      var li = document.createElement("li");
      var status = document.createElement("span");
      status.className = "badge " + (row.status_class === "success" ? "ok" : "bad");
      status.textContent = row.status;
      li.appendChild(status);
      li.appendChild(document.createTextNode(" " + hourFmt.format(new Date(row.created_at)) +
        " · " + (row.model || "-") + " · " + (row.key_prefix || "-") + " · " +
        count.format(row.input_tokens + row.output_tokens) + " tok · " +
        money.format(Number(row.cost)) + " · " + count.format(row.latency_ms) + " ms"));
      feed.insertBefore(li, feed.firstChild);
      while (feed.children.length > 20) { feed.removeChild(feed.lastChild); }
    }

    document.addEventListener("turnpike:usage", function (ev) {
      var msg = ev.detail;
      var rows = msg.rows || [];
      if (data.key_id !== null && data.key_id !== undefined) {
        rows = rows.filter(function (r) { return r.key_id === data.key_id; });
        if (!rows.length) { return; }
      }
      var totals = data.key_id === null || data.key_id === undefined ? msg.totals : null;
      var cost = 0;
      rows.forEach(function (r) {
        var c = Number(r.cost) || 0;
        cost += totals ? 0 : c;
        today.lat[bucket(r.latency_ms)] += 1;
        if (r.ttfb_ms !== null && r.ttfb_ms !== undefined) { today.ttfb[bucket(r.ttfb_ms)] += 1; }
        addToHour(r, c);
        addToList(charts.models, r.model || "-", c, function (j) {
          return charts.models.data.labels[j] === (r.model || "-");
        });
        addToList(charts.keys, null, c, function (j) {
          var k = data.keys[j];
          return k && r.key_prefix && k.prefix.indexOf(r.key_prefix) === 0;
        });
        addToFeed(r);
      });
      if (totals) {
        today.requests += totals.requests;
        today.errors += totals.errors;
        ["input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"].forEach(function (n) {
          today[n] += totals[n];
        });
        cost = Number(totals.cost) || 0;
      } else {
        rows.forEach(function (r) {
          today.requests += 1;
          today.errors += r.status_class === "success" ? 0 : 1;
          ["input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"].forEach(function (n) {
            today[n] += r[n];
          });
        });
      }
      today.cost += cost;
      month += cost;
      if (charts.days) {
        var last = charts.days.data.labels.length - 1;
        charts.days.data.datasets[0].data[last] += totals ? totals.requests : rows.length;
        charts.days.data.datasets[1].data[last] += cost;
      }
      var avail = document.querySelector('[data-kpi="available"]');
      if (avail && avail.getAttribute("data-raw")) {
        var left = Number(avail.getAttribute("data-raw")) - cost;
        avail.setAttribute("data-raw", String(left));
        avail.textContent = new Intl.NumberFormat(lang, { minimumFractionDigits: 2,
                                                          maximumFractionDigits: 2 }).format(left);
      }
      document.querySelectorAll("[data-empty-state]").forEach(function (el) { el.hidden = true; });
      render();
      Object.keys(charts).forEach(function (name) { if (charts[name]) { charts[name].update(); } });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
