// Runs: the run page follows its run live (cells done of total, the status) by polling the
// JSON API, and reloads itself when the run has ended so the server renders the output and
// the artifacts. The run form shows the file input only when "A file I upload" is chosen.
// Every page works without this script.
(function () {
  "use strict";
  var FINAL = ["succeeded", "failed", "cancelled"];

  function follow(live) {
    var url = live.dataset.runUrl;
    var bar = document.getElementById("run-progress");
    var cells = document.getElementById("run-cells");
    var status = document.getElementById("run-status");
    var delay = 1000;
    var deadline = Date.now() + 7 * 24 * 3600 * 1000; // a run's longest time limit
    function tick() {
      if (Date.now() > deadline) { return; }
      // the hub accepts its login cookie on a script's request only with the xsrf token
      fetch(url, {credentials: "same-origin",
                  headers: {"Accept": "application/json", "X-XSRFToken": live.dataset.xsrf}})
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (run) {
          var p = run.progress;
          bar.max = Math.max(p.cells_total, 1);
          bar.value = p.cells_done;
          bar.textContent = p.cells_done + " of " + p.cells_total;
          cells.textContent = p.cells_done + " of " + (p.cells_total || "?") + " cells done";
          if (status.textContent !== run.status) {
            status.textContent = run.status;
            status.className = "run-status run-" + run.status;
          }
          if (FINAL.indexOf(run.status) >= 0) {
            window.location.reload();
            return;
          }
          delay = 1000;
          window.setTimeout(tick, delay);
        })
        .catch(function () {
          delay = Math.min(delay * 2, 15000); // a network hiccup: back off, keep following
          window.setTimeout(tick, delay);
        });
    }
    window.setTimeout(tick, delay);
  }

  function uploadToggle(form) {
    var upload = document.getElementById("data-upload");
    var field = form.querySelector(".upload-field");
    if (!upload || !field) { return; }
    function sync() {
      var on = upload.checked;
      field.hidden = !on;
    }
    form.querySelectorAll("input[name=data]").forEach(function (r) {
      r.addEventListener("change", sync);
    });
    // choosing a file selects "A file I upload"
    var file = document.getElementById("f-data_file");
    file.addEventListener("change", function () { if (file.files.length) { upload.checked = true; sync(); } });
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("run-live");
    if (live && live.dataset.final === "no") { follow(live); }
    var form = document.getElementById("run-form");
    if (form) { uploadToggle(form); }
  });
})();
