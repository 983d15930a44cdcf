// Publish page: drop a bundle zip on the form (a plain file input underneath) and have it
// checked at once by POST api/bundles/validate, which stores nothing; the problems are listed
// by file and field before anything is submitted. Without this script, "Check bundle" posts
// the same file to the page.
(function () {
  "use strict";
  var form = document.getElementById("publish-form");
  if (!form) { return; }
  var zone = document.getElementById("dropzone");
  var input = document.getElementById("f-bundle");
  var result = document.getElementById("check-result");

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = text; }
    if (cls) { node.className = cls; }
    return node;
  }

  function code(text) { return el("code", text); }

  function show(check, filename) {
    result.textContent = "";
    if (check.valid) {
      var p = el("p", null, "notice");
      p.id = "check-valid";
      p.append("The bundle ", code(filename), " is valid: ", el("strong", check.product),
               " version ", el("strong", check.version), " (");
      p.append(check.same_as ? "the same bytes as version " + check.same_as +
               ", already submitted: submitting again changes nothing" :
               check.new_product ? "a new product" :
               "a new version; the latest is " + check.previous);
      p.append("). Nothing has been submitted yet.");
      result.append(p);
      return;
    }
    var wrap = el("div", null, "problems");
    wrap.id = "check-problems";
    var table = el("table");
    var n = check.problems.length;
    var caption = el("caption");
    caption.append(n + " problem" + (n === 1 ? "" : "s") + " in ", code(filename),
                   ": fix them and check again. Nothing was submitted.");
    table.append(caption);
    var head = el("thead");
    var hr = el("tr");
    ["File", "Field", "Problem"].forEach(function (h) {
      var th = el("th", h);
      th.scope = "col";
      hr.append(th);
    });
    head.append(hr);
    table.append(head);
    var body = el("tbody");
    check.problems.forEach(function (problem) {
      var tr = el("tr");
      var file = el("td");
      file.append(code(problem.file || "(the archive)"));
      var field = el("td");
      if (problem.field) { field.append(code(problem.field)); } else { field.textContent = "\u2014"; }
      tr.append(file, field, el("td", problem.message));
      body.append(tr);
    });
    table.append(body);
    wrap.append(table);
    result.append(wrap);
  }

  function showError(message) {
    result.textContent = "";
    var p = el("p", message, "form-error");
    p.setAttribute("role", "alert");
    result.append(p);
  }

  function check() {
    var file = input.files && input.files[0];
    if (!file) { return; }
    var data = new FormData();
    data.append("bundle", file, file.name);
    result.textContent = "";
    result.append(el("p", "Checking " + file.name + "\u2026", "muted"));
    form.dataset.checking = "1";
    fetch(form.dataset.validateUrl, {
      method: "POST", body: data, credentials: "same-origin",
      headers: {"X-XSRFToken": form.dataset.xsrf}
    }).then(function (response) {
      return response.json().then(function (payload) {
        if (!response.ok) {
          if (payload.problems) { show({valid: false, problems: payload.problems}, file.name); }
          else { showError(payload.message || ("The check failed (" + response.status + ")")); }
          return;
        }
        show(payload, file.name);
      });
    }).catch(function () {
      showError("The bundle could not be checked; use \"Check bundle\".");
    }).finally(function () {
      form.dataset.checking = "0";
    });
  }

  input.addEventListener("change", check);
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  zone.addEventListener("dragleave", function () { zone.classList.remove("dragging"); });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("dragging");
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) { return; }
    input.files = files;  // the plain input carries the file when the form is submitted
    check();
  });
})();
