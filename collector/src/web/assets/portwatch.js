// portwatch dashboard: optional live refresh. Every page works without it.
// Elements marked data-refresh="SECONDS" are re-fetched from the same URL
// and swapped in place, unless the user is typing in a form.
(function () {
  "use strict";
  var el = document.querySelector("[data-refresh]");
  if (!el || !window.fetch || !window.DOMParser) return;
  var seconds = Math.max(2, parseInt(el.getAttribute("data-refresh"), 10) || 10);
  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }
  function tick() {
    if (document.hidden || busy()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Portwatch-Refresh": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("[data-refresh]");
        var now = document.querySelector("[data-refresh]");
        if (fresh && now) now.replaceWith(document.importNode(fresh, true));
      })
      .catch(function () {});
  }
  setInterval(tick, seconds * 1000);
})();
