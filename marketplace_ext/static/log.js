// In-browser verification of a log entry's inclusion proof against the signed checkpoint.
// Formats (see marketplace_ext/merkle.py, logentry.py, verify.py):
//   leaf = SHA-256(0x00 || entry data), node = SHA-256(0x01 || left || right)   (RFC 9162)
//   checkpoint = C2SP signed note: "<origin>\n<size>\n<base64 root>\n" + "\n" + signature lines
//     "\u2014 <key name> <base64(key id[4] || Ed25519 signature[64])>"
//   vkey = "<name>+<hex key id>+<base64(0x01 || Ed25519 public key)>",
//     key id = SHA-256(name || "\n" || 0x01 || public key)[:4]
//   commitment = SHA-256("gds-marketplace/log-details/v1\n" || salt || canonical details)
// Every check runs here, with WebCrypto; the page lists which ones ran and which could not.
(function () {
  "use strict";
  var enc = new TextEncoder();
  var COMMITMENT_PREFIX = "gds-marketplace/log-details/v1\n";

  function b64dec(text) {
    var bin = atob(text);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function hexdec(text) {
    if (!/^([0-9a-fA-F]{2})*$/.test(text)) throw new Error("not hex");
    var out = new Uint8Array(text.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
    return out;
  }
  function hex(bytes) {
    return Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }
  function concat() {
    var total = 0, i;
    for (i = 0; i < arguments.length; i++) total += arguments[i].length;
    var out = new Uint8Array(total), at = 0;
    for (i = 0; i < arguments.length; i++) { out.set(arguments[i], at); at += arguments[i].length; }
    return out;
  }
  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  async function sha256() {
    var data = concat.apply(null, arguments);
    return new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  }
  function nodeHash(left, right) { return sha256(Uint8Array.of(1), left, right); }

  function parseVkey(vkey) {
    var plus = vkey.indexOf("+");
    var name = vkey.slice(0, plus), rest = vkey.slice(plus + 1);
    var hexId = rest.slice(0, 8), raw = b64dec(rest.slice(9));
    if (plus < 1 || rest.charAt(8) !== "+" || raw.length !== 33 || raw[0] !== 1) {
      throw new Error("the log key is not an Ed25519 vkey");
    }
    return { name: name, keyId: hexdec(hexId), alg: raw[0], pub: raw.slice(1) };
  }

  function splitNote(note) {
    var cut = note.lastIndexOf("\n\n");
    if (cut < 0 || note.slice(-1) !== "\n") throw new Error("not a signed note");
    var text = note.slice(0, cut + 1);
    var sigs = note.slice(cut + 2, -1).split("\n").map(function (line) {
      if (line.indexOf("\u2014 ") !== 0) throw new Error("malformed signature line");
      var body = line.slice(2), space = body.indexOf(" ");
      var raw = b64dec(body.slice(space + 1));
      return { name: body.slice(0, space), keyId: raw.slice(0, 4), sig: raw.slice(4) };
    });
    return { text: text, sigs: sigs };
  }

  function parseCheckpoint(text) {
    var lines = text.slice(0, -1).split("\n");
    if (lines.length < 3 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) {
      throw new Error("not a checkpoint body");
    }
    var root = b64dec(lines[2]);
    if (root.length !== 32) throw new Error("the checkpoint root is not 32 bytes");
    return { origin: lines[0], size: Number(lines[1]), root: root };
  }

  // RFC 9162 section 2.1.3.2, as merkle.root_from_inclusion_proof (no 32-bit bit operations:
  // indices may exceed 2^31)
  async function rootFromInclusion(leaf, index, size, proof) {
    var fn = index, sn = size - 1, r = leaf;
    for (var i = 0; i < proof.length; i++) {
      var p = proof[i];
      if (p.length !== 32) throw new Error("a proof hash is not 32 bytes");
      if (sn === 0) throw new Error("the inclusion proof is too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn !== 0 && fn % 2 === 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the inclusion proof is too short");
    return r;
  }

  async function ed25519Verify(pub, sig, message) {
    var key;
    try {
      key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      return null; // this browser's WebCrypto has no Ed25519
    }
    return crypto.subtle.verify({ name: "Ed25519" }, key, sig, message);
  }

  var xsrf = "";  // the hub checks it on cookie-authenticated fetches, GETs included

  async function getJSON(url) {
    var r = await fetch(url, { credentials: "same-origin",
                               headers: { Accept: "application/json", "X-XSRFToken": xsrf } });
    var body = await r.json();
    if (!r.ok) throw new Error(url + ": " + (body.message || r.status));
    return body;
  }

  async function verify(box) {
    var api = box.dataset.api, index = Number(box.dataset.index), vkey = box.dataset.logKey;
    var checks = [];
    function record(id, label, status, detail) {
      checks.push({ id: id, label: label, status: status, detail: detail || "" });
    }
    var cp = await getJSON(api + "log/checkpoint");
    var entry = await getJSON(api + "log/entries/" + index);
    var proofReply = await getJSON(api + "log/proof/inclusion?index=" + index + "&size=" + cp.size);

    var key = parseVkey(vkey);
    var keyId = (await sha256(enc.encode(key.name + "\n"), Uint8Array.of(key.alg), key.pub)).slice(0, 4);
    record("key-id", "The log key's ID is SHA-256 of its name and key", equal(keyId, key.keyId) ? "passed" : "failed");

    var note = splitNote(cp.checkpoint);
    var mine = note.sigs.filter(function (s) { return s.name === key.name && equal(s.keyId, key.keyId); });
    if (!mine.length) {
      record("signature", "The checkpoint is signed by the log key (Ed25519)", "failed", "no signature line of that key");
    } else {
      var ok = await ed25519Verify(key.pub, mine[0].sig, enc.encode(note.text));
      if (ok === null) {
        record("signature", "The checkpoint is signed by the log key (Ed25519)", "skipped",
               "this browser's WebCrypto has no Ed25519; check it with market verify");
      } else {
        record("signature", "The checkpoint is signed by the log key (Ed25519)", ok ? "passed" : "failed");
      }
    }
    var checkpoint = parseCheckpoint(note.text);
    record("checkpoint", "The checkpoint covers entry " + index + " (tree size " + checkpoint.size + ")",
           index < checkpoint.size && checkpoint.size === proofReply.size ? "passed" : "failed");

    var leaf;
    if (entry.data !== null && entry.data !== undefined) {
      leaf = await sha256(Uint8Array.of(0), enc.encode(entry.data));
      record("leaf", "The leaf hash is SHA-256(0x00 \u2016 entry)", equal(leaf, b64dec(entry.leaf_hash)) ? "passed" : "failed");
    } else {
      leaf = b64dec(entry.leaf_hash);
      record("leaf", "The leaf hash is SHA-256(0x00 \u2016 entry)", "skipped", "the entry's bytes are not yours to read; its served leaf hash is used");
    }
    var proof = proofReply.proof.map(b64dec);
    try {
      var root = await rootFromInclusion(leaf, index, checkpoint.size, proof);
      record("inclusion", "The inclusion proof (" + proof.length + " SHA-256 hashes) leads to the checkpoint's root",
             equal(root, checkpoint.root) ? "passed" : "failed");
    } catch (e) {
      record("inclusion", "The inclusion proof leads to the checkpoint's root", "failed", e.message);
    }
    if (entry.details && entry.salt && entry.data) {
      var publicPart = JSON.parse(entry.data);
      var commitment = await sha256(enc.encode(COMMITMENT_PREFIX), hexdec(entry.salt), enc.encode(entry.details));
      record("details", "The details you read match the entry's salted commitment (SHA-256)",
             hex(commitment) === publicPart.commitment ? "passed" : "failed");
    } else if (!entry.legacy) {
      record("details", "The details match the entry's commitment", "skipped", "only the entry's parties and operators read its details");
    }
    return checks;
  }

  function show(box, checks, error) {
    var out = document.getElementById("verify-result");
    out.textContent = "";
    var verdict = document.createElement("p");
    verdict.id = "verdict";
    var failed = checks.filter(function (c) { return c.status === "failed"; });
    var skipped = checks.filter(function (c) { return c.status === "skipped"; });
    if (error || failed.length) {
      verdict.className = "verdict verdict-failed";
      verdict.dataset.verdict = "failed";
      verdict.textContent = "Verification FAILED: " + (error ? error.message
        : failed.map(function (c) { return c.label; }).join("; "));
    } else if (skipped.some(function (c) { return c.id === "signature"; })) {
      verdict.className = "verdict verdict-partial";
      verdict.dataset.verdict = "partial";
      verdict.textContent = "Included under the checkpoint's root; the checkpoint's signature was not checked by this browser.";
    } else {
      verdict.className = "verdict verdict-passed";
      verdict.dataset.verdict = "passed";
      verdict.textContent = "Verified in this browser: entry " + box.dataset.index +
        " is in the log under a checkpoint signed by the log key.";
    }
    out.appendChild(verdict);
    if (checks.length) {
      var heading = document.createElement("h3");
      heading.textContent = "Checks your browser ran";
      out.appendChild(heading);
      var list = document.createElement("ul");
      list.id = "checks";
      checks.forEach(function (c) {
        var li = document.createElement("li");
        li.dataset.check = c.id;
        li.dataset.status = c.status;
        li.className = "check check-" + c.status;
        var mark = { passed: "\u2714 passed", failed: "\u2718 failed", skipped: "\u2013 not run" }[c.status];
        li.textContent = mark + ": " + c.label + (c.detail ? " (" + c.detail + ")" : "");
        list.appendChild(li);
      });
      out.appendChild(list);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("verifier");
    var button = document.getElementById("verify-button");
    if (!box || !button) return;
    xsrf = box.dataset.xsrf || "";
    button.addEventListener("click", async function () {
      button.setAttribute("aria-disabled", "true");
      document.getElementById("verify-result").textContent = "Checking\u2026";
      try {
        show(box, await verify(box), null);
      } catch (e) {
        show(box, [], e);
      } finally {
        button.removeAttribute("aria-disabled");
      }
    });
  });
})();
