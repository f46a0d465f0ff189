/* The popup preview always starts fresh: forget a close or signup remembered by the embed script. */
(function () {
  var key = document.body.getAttribute("data-clear-popup-state");
  try { if (key) { window.localStorage.removeItem(key); } } catch (e) { /* storage disabled */ }
})();
