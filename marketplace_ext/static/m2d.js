// Model-to-data request page: follow the request (GET api/m2d/<id>) while it can still change,
// and reload once its status or its run's status changes, so the returned files appear. Stops
// after a deadline; the page works without it (reload by hand). The fetch sends the xsrf
// token, GET included: the hub checks it on every cookie-authenticated request that is not a
// navigation.
(function () {
  "use strict";
  var facts = document.getElementById("m2d-facts");
  if (!facts || !facts.dataset.follow) { return; }
  var live = document.getElementById("m2d-live");
  var deadline = Date.now() + 30 * 60 * 1000;
  var status = facts.dataset.status, runStatus = facts.dataset.runStatus;

  function poll() {
    if (Date.now() > deadline) {
      live.textContent = "(no longer following: reload the page to see the latest status)";
      return;
    }
    fetch(facts.dataset.follow, {
      credentials: "same-origin", cache: "no-store",
      headers: {"Accept": "application/json", "X-XSRFToken": facts.dataset.xsrf}
    })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (request) {
        if (!request) { setTimeout(poll, 5000); return; }
        var run = request.run ? request.run.status : "";
        if (request.status !== status || run !== runStatus) {
          live.textContent = "(the request is now " + request.status + (run ? ", run " + run : "") + ": reloading)";
          window.location.reload();
          return;
        }
        if (request.run && request.run.progress && request.run.progress.cells_total) {
          live.textContent = "(" + request.run.progress.cells_done + " of " +
            request.run.progress.cells_total + " cells)";
        }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
