// The buy form's summary: the chosen plan's price and the balance after buying, kept up to
// date as the plan changes. The page works without it (each plan's label says the same).
(function () {
  "use strict";
  function update(form) {
    var summary = document.getElementById("buy-summary");
    var chosen = form.querySelector("input[name=plan]:checked");
    if (!summary || !chosen) { return; }
    summary.textContent = "You pay " + chosen.dataset.price + " points; your unit's balance goes from " +
      form.dataset.balance + " to " + chosen.dataset.after + " points." +
      (chosen.dataset.after.charAt(0) === "-" ? " That is more than your unit has." : "");
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("buy-form");
    if (!form) { return; }
    form.addEventListener("change", function () { update(form); });
    update(form);
  });
})();
