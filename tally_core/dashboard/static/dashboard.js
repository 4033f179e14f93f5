// Draws the page's plotly figures (from the server) and polls for new calls.
(function () {
  var figures = JSON.parse(document.getElementById("figures").textContent || "{}");
  Object.keys(figures).forEach(function (name) {
    var el = document.getElementById("chart-" + name);
    if (el) {
      Plotly.newPlot(el, figures[name].data, figures[name].layout, {displaylogo: false, responsive: true});
    }
  });
  // The org switcher and range picker apply at once.
  ["org-switcher", "range"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { el.addEventListener("change", function () { document.getElementById("scope").submit(); }); }
  });
  // Auto-refresh: reload only when the org's ledger changed (calls are flowing).
  var body = document.body, box = document.getElementById("auto-refresh");
  var key = "tally-auto-refresh";
  box.checked = window.localStorage.getItem(key) === "1";
  box.addEventListener("change", function () { window.localStorage.setItem(key, box.checked ? "1" : "0"); });
  var every = parseFloat(body.dataset.refresh || "5") * 1000;
  setInterval(function () {
    if (!box.checked) { return; }
    fetch("/api/span?org=" + encodeURIComponent(body.dataset.org)).then(function (r) { return r.json(); }).then(function (s) {
      if (s.version !== body.dataset.version) { window.location.reload(); }
    });
  }, every);
})();
