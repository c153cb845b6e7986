/* Starts ReDoc (its standalone bundle, served from /vendor) on /redoc. Its styles are <style> elements added at run
   time: they carry the nonce this response's Content-Security-Policy names (read from the page's meta tag).
   Search is off: ReDoc runs it in a worker made from a blob: URL, which the policy does not allow. */
(function () {
  "use strict";
  const root = document.getElementById("redoc");
  const nonce = document.querySelector('meta[name="csp-nonce"]').content;
  Redoc.init(root.dataset.spec, {nonce: nonce, disableSearch: true, scrollYOffset: "body > header"}, root);
})();
