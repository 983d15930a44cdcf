// Progressive behaviour shared by every page; each page works without it.
// - a form that is being submitted cannot be submitted again (a double click buys once; the
//   server's idempotency key is the real guarantee)
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.submitting === "1") {
      event.preventDefault();
      return;
    }
    form.dataset.submitting = "1";
    form.querySelectorAll("button[type=submit], input[type=submit]").forEach(function (b) {
      b.setAttribute("aria-disabled", "true");
    });
  });
})();
