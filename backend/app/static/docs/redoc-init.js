// Starts ReDoc at /redoc from the app's own copy (no CDN, no web fonts, no inline script).
(function () {
  var root = document.getElementById("redoc");
  Redoc.init(root.getAttribute("data-openapi-url"), { disableSearch: false }, root);
})();
