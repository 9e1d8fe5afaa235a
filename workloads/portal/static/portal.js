// Live vitals on the patient page: history chart (uPlot) and server-sent events. No inline script (CSP).
(function () {
  "use strict";
  function start() {
    var live = document.getElementById("live");
    if (!live) { return; }
    var shown = ["HR", "SpO2"];
    var data = [[], [], []];
    var chart = null;
    var box = document.getElementById("chart");
    function draw() {
      if (chart) { chart.setData(data); return; }
      chart = new uPlot({ width: Math.min(900, box.clientWidth || 900), height: 260,
        series: [{}, { label: "HR", stroke: "#b00020" }, { label: "SpO2", stroke: "#0b3d5c" }] }, data, box);
    }
    function add(metric, at, value) {
      var column = shown.indexOf(metric) + 1;
      if (column < 1) { return; }
      var last = data[0].length - 1;
      if (last < 0 || data[0][last] !== at) {
        data[0].push(at); data[1].push(null); data[2].push(null); last += 1;
        if (data[0].length > 600) { data.forEach(function (s) { s.shift(); }); last -= 1; }
      }
      data[column][last] = value;
    }
    fetch(live.dataset.series, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (series) {
      var points = [];
      shown.forEach(function (metric) { (series[metric] || []).forEach(function (p) { points.push([p[0], metric, p[1]]); }); });
      points.sort(function (a, b) { return a[0] - b[0]; });
      points.forEach(function (p) { add(p[1], p[0], p[2]); });
      draw();
    });
    var status = document.getElementById("stream-status");
    var source = new EventSource(live.dataset.events);
    source.onopen = function () { status.textContent = "live"; };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {  // refused (signed out, no longer yours): no retry
        live.classList.add("stale"); status.classList.add("status-stale");
        status.textContent = "Not live: the values shown are not updated. Reload the page or sign in again.";
      } else { status.textContent = "reconnecting…"; }
    };
    source.addEventListener("vital", function (message) {
      var event = JSON.parse(message.data);
      var cell = live.querySelector('[data-metric="' + event.metric + '"]');
      if (cell) { cell.textContent = String(event.value); cell.dataset.received = String(event.received); }
      add(event.metric, event.at, event.value);
      if (chart) { chart.setData(data); }
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
  // A ward list whose refresh fails (signed out, consent service down, portal unreachable) must not keep
  // showing old values as if they were current: mark it stale and say since when.
  var lastRefresh = new Date();
  function wardRefreshed(event) {
    var rows = event.detail.elt, status = document.getElementById("ward-status");
    if (!rows || rows.id !== "ward-rows" || !status) { return; }
    var table = rows.closest("table"), xhr = event.detail.xhr;
    if (event.detail.successful) {
      lastRefresh = new Date();
      if (table.classList.contains("stale")) {
        table.classList.remove("stale"); status.classList.remove("status-stale"); status.textContent = "";
      }
      return;
    }
    var why = !xhr || !xhr.status ? "the portal cannot be reached"
      : xhr.status === 401 ? "you are signed out: sign in again"
      : xhr.status === 503 ? "a service the ward list needs is unavailable" : "the portal answered " + xhr.status;
    table.classList.add("stale"); status.classList.add("status-stale");
    status.textContent = "Not updated since " + lastRefresh.toLocaleTimeString() + " (" + why + ").";
  }
  document.addEventListener("htmx:afterRequest", function (event) {
    var redirect = event.detail.xhr && event.detail.xhr.getResponseHeader("HX-Redirect");
    if (redirect) { window.location.href = redirect; return; }
    wardRefreshed(event);
  });
})();
