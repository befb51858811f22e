// pgfleet console: live regions fed by Server-Sent Events, copy buttons,
// checks as you type. Every page works without it; it only adds.
"use strict";

(function () {
  // Live regions: the server sends each region's HTML as an event named as
  // the region. A region the user is working in (focus inside) is updated
  // once they leave it, so a select never changes under the pointer.
  var pending = {};
  function swap(el, html) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) {
      pending[el.id] = html;
      return;
    }
    el.innerHTML = html;
  }
  document.addEventListener("focusout", function () {
    setTimeout(function () {
      Object.keys(pending).forEach(function (id) {
        var el = document.getElementById(id);
        if (el && !el.contains(document.activeElement)) {
          el.innerHTML = pending[id];
          delete pending[id];
        }
      });
    }, 0);
  });

  function connectLive() {
    var src = document.body.getAttribute("data-live");
    if (!src || !window.EventSource) return;
    var es = new EventSource(src);
    var banner = document.getElementById("conn-lost");
    document.querySelectorAll("[data-region]").forEach(function (el) {
      es.addEventListener(el.getAttribute("data-region"), function (e) { swap(el, e.data); });
    });
    es.addEventListener("open", function () { if (banner) banner.hidden = true; });
    es.addEventListener("error", function () { if (banner) banner.hidden = false; });
    es.addEventListener("expired", function () { es.close(); window.location.reload(); });
    es.addEventListener("gone", function (e) {
      es.close();
      var main = document.getElementById("main");
      var p = document.createElement("p");
      p.className = "error";
      p.setAttribute("role", "alert");
      p.textContent = e.data + " ";
      var a = document.createElement("a");
      a.href = "/clusters";
      a.textContent = "Back to the clusters";
      p.appendChild(a);
      main.insertBefore(p, main.firstChild);
    });
    window.pgfleetLive = es;
  }

  // Copy buttons: from a field on the page, or a URL fetched when clicked
  // (a list of clusters carries no password until asked).
  function copied(btn, ok, msg) {
    var status = btn.parentNode.querySelector(".copy-status");
    if (status) status.textContent = msg;
    btn.setAttribute("data-copied", ok ? "yes" : "no");
  }
  function writeClipboard(text, btn, field) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        function () { copied(btn, true, "Copied"); },
        function () { fallbackCopy(text, btn, field); });
    }
    fallbackCopy(text, btn, field);
  }
  function fallbackCopy(text, btn, field) {
    var f = field;
    if (!f) {
      f = document.createElement("textarea");
      f.value = text;
      f.setAttribute("readonly", "");
      f.style.position = "absolute";
      f.style.left = "-9999px";
      document.body.appendChild(f);
    }
    f.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    if (!field) document.body.removeChild(f);
    copied(btn, ok, ok ? "Copied" : "Select the text and copy it");
  }
  document.addEventListener("click", function (e) {
    var btn = e.target.closest ? e.target.closest("button.copy") : null;
    if (!btn) return;
    var from = btn.getAttribute("data-copy-from");
    if (from) {
      var f = document.getElementById(from);
      writeClipboard(f.value, btn, f);
      return;
    }
    var url = btn.getAttribute("data-copy-url");
    if (!url) return;
    copied(btn, false, "…");
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (j) {
      if (j.error) { copied(btn, false, j.error); return; }
      btn.setAttribute("data-url", j.url);
      writeClipboard(j.url, btn, null);
    }, function () { copied(btn, false, "Could not reach the agent"); });
  });

  // Name fields are checked as you type, by the server, with the API's
  // rules and words.
  function checkField(input) {
    var msg = document.getElementById(input.getAttribute("aria-describedby").split(" ")[0]);
    var timer = null, seq = 0;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var mine = ++seq;
        fetch(input.getAttribute("data-check") + "?name=" + encodeURIComponent(input.value), { credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (j) {
            if (mine !== seq) return;
            msg.textContent = j.error || "";
            if (j.error) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
          }, function () {});
      }, 200);
    });
  }

  // A destroy button is enabled only once the name is typed; the API
  // checks it again.
  function mustEqual(input) {
    var btn = document.getElementById(input.getAttribute("data-enables"));
    function update() { btn.disabled = input.value !== input.getAttribute("data-must-equal"); }
    input.addEventListener("input", update);
    update();
  }

  // The primary region cannot also have a read replica: its box is
  // disabled while it is the primary's.
  function primaryRegion(sel) {
    function update() {
      document.querySelectorAll("input[data-replica-region]").forEach(function (box) {
        var label = box.parentNode;
        var note = label.querySelector(".muted");
        var isPrimary = box.getAttribute("data-replica-region") === sel.value;
        if (isPrimary) box.checked = false;
        box.disabled = isPrimary;
        if (isPrimary && !note) {
          note = document.createElement("span");
          note.className = "muted";
          note.textContent = "(the primary region)";
          label.appendChild(document.createTextNode(" "));
          label.appendChild(note);
        } else if (!isPrimary && note) {
          label.removeChild(note);
        }
      });
    }
    sel.addEventListener("change", update);
  }

  // A secret shown once (a new password, an app's URLs) leaves the page
  // when dismissed: the link goes to the page without it, and the node is
  // removed at once, so no copy stays in this document.
  document.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest("a[data-dismiss]") : null;
    if (!a) return;
    var box = document.getElementById(a.getAttribute("data-dismiss"));
    if (box) box.parentNode.removeChild(box);
  });

  // A submitted form says so, and is not sent twice.
  document.addEventListener("submit", function (e) {
    var b = e.target.querySelector("button[type=submit]");
    if (b) {
      if (b.getAttribute("data-busy")) { e.preventDefault(); return; }
      b.setAttribute("data-busy", "1");
      b.setAttribute("aria-busy", "true");
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-check]").forEach(checkField);
    document.querySelectorAll("input[data-must-equal]").forEach(mustEqual);
    var pr = document.getElementById("primary_region");
    if (pr) primaryRegion(pr);
    connectLive();
  });
})();
