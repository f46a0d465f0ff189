/* The popup preview always starts fresh: forget a close or signup remembered by the embed script.
 * Showing it is no view of the form: the embed script's view beacon is answered here.
 * A live preview (unsaved settings) carries the form's definition in #envoi-preview-form: the
 * embed script gets it instead of the saved one, and a signup from it stores and sends nothing. */
(function () {
  var key = document.body.getAttribute("data-clear-popup-state");
  try { if (key) { window.localStorage.removeItem(key); } } catch (e) { /* storage disabled */ }
  var source = document.getElementById("envoi-preview-form");
  var definition = source ? JSON.parse(source.textContent) : null;
  var realFetch = window.fetch;
  function answer(body) {
    return Promise.resolve(new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } }));
  }
  window.fetch = function (url, options) {
    var path = new URL(String(url), window.location.href).pathname;
    if (path.indexOf("/forms/") !== 0) { return realFetch.apply(this, arguments); }
    if (/^\/forms\/[^/]+\/views$/.test(path)) { return Promise.resolve(new Response(null, { status: 204 })); }
    if (!definition) { return realFetch.apply(this, arguments); }
    var post = options && options.method && options.method.toUpperCase() === "POST";
    return answer(post ? { message: "Preview: nothing was stored or sent." } : definition);
  };
})();
