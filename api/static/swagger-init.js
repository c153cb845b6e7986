/* Starts Swagger UI (swagger-ui-dist, served from /vendor) on /docs: a file of its own because the pages' Content-
   Security-Policy runs no inline script. The validator badge is off: it would send the schema to a remote service. */
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    domNode: root,
    deepLinking: true,
    filter: true,
    validatorUrl: null,
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
})();
