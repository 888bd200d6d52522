// The live view's charts refresh themselves; nothing else needs script.
"use strict";
(function () {
  var box = document.getElementById("charts");
  if (!box) return;
  var every = Math.max(parseInt(box.dataset.every, 10) || 5000, 1000);
  setInterval(function () {
    fetch(box.dataset.refresh, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) { window.location = "/ui/login"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) box.innerHTML = html;
    }).catch(function () {});
  }, every);
})();
