/* Envoi signup form: one <script src="BASE/forms/SLUG/embed.js" async></script> on any site.
 * Inline (where the tag is, or in an element data-envoi-form="SLUG") or as a popup (after a
 * delay, on exit intent, at a scroll depth). Rendered in a Shadow DOM so the host page's styles
 * do not reach it and ours do not leak out. Plain ES2017, no dependency. */
(function (slug) {
  "use strict";
  var script = document.currentScript ||
    document.querySelector('script[src*="/forms/' + slug + '/embed.js"]');
  if (!script || !script.src) { return; }
  var origin = new URL(script.src, document.baseURI).origin;
  var formUrl = origin + "/forms/" + encodeURIComponent(slug);
  var storageKey = "envoi:" + slug;
  var DAY_MS = 86400000;

  var TEXT = {
    en: { close: "Close", sending: "Sending…", tooMany: "Too many attempts: please try again later.",
          failed: "Something went wrong: please try again.", required: "(required)" },
    fr: { close: "Fermer", sending: "Envoi…", tooMany: "Trop de tentatives : réessayez plus tard.",
          failed: "Une erreur est survenue : réessayez.", required: "(obligatoire)" }
  };

  // Every size in px, every property set on .envoi: the host page's inherited values
  // (font-size on html, color on *) stop at our wrapper, and rem units are not used.
  var CSS = [
    ".envoi{all:initial;display:block;box-sizing:border-box;font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;text-align:left;}",
    ".envoi *,.envoi *::before,.envoi *::after{box-sizing:border-box;}",
    "input,button{font-family:inherit;line-height:1.3;}",
    ".panel{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:20px;max-width:420px;}",
    "dialog{border:none;padding:0;color:inherit;background:transparent;max-width:calc(100vw - 24px);}",
    "dialog::backdrop{background:rgba(15,20,25,.55);}",
    "dialog .panel{position:relative;width:420px;max-width:100%;box-shadow:0 12px 40px rgba(0,0,0,.3);}",
    "h2{margin:0 32px 12px 0;font-size:20px;font-weight:600;line-height:1.3;}",
    ".field{margin:0 0 12px;}",
    "label{display:block;margin:0 0 4px;font-size:14px;font-weight:600;}",
    "input[type=text],input[type=email],input[type=tel],input[type=date],input[type=number]{display:block;width:100%;margin:0;padding:8px 10px;font-size:16px;color:#1f2328;background:#fff;border:1px solid #8c959f;border-radius:6px;}",
    "input:focus,button:focus{outline:2px solid #0969da;outline-offset:1px;}",
    "input[aria-invalid=true]{border-color:#cf222e;}",
    ".check{display:flex;gap:8px;align-items:flex-start;}",
    ".check label{font-weight:400;}",
    ".error{margin:4px 0 0;font-size:14px;color:#cf222e;}",
    ".consent{margin:0 0 12px;font-size:13px;color:#57606a;}",
    ".submit{display:inline-block;margin:0;padding:9px 16px;font-size:16px;font-weight:600;color:#fff;background:#1f6feb;border:none;border-radius:6px;cursor:pointer;}",
    ".submit[disabled]{opacity:.6;cursor:default;}",
    ".close{position:absolute;top:8px;right:8px;width:32px;height:32px;padding:0;font-size:22px;line-height:32px;color:#57606a;background:transparent;border:none;border-radius:6px;cursor:pointer;}",
    ".hp{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden;}",
    ".success{margin:0;font-size:16px;}",
    ".status{margin:8px 0 0;font-size:14px;}"
  ].join("\n");

  // Where the script stands, on its own tag, for the site's CSS and for debugging:
  // inline | waiting | open | closed | capped | signed-up | error.
  function mark(state) { script.setAttribute("data-envoi-state", state); }

  // One view a page load, counted when the form is shown (inline, or the popup opening), not when
  // the script loads. A simple CORS POST (no preflight), no cookie; its answer is not read.
  var viewCounted = false;
  function countView(source) {
    if (viewCounted) { return; }
    viewCounted = true;
    try {
      fetch(formUrl + "/views", { method: "POST", mode: "cors", credentials: "omit", keepalive: true,
                                  body: new URLSearchParams({ source: source }) })
        .catch(function () { /* a lost view is not worth the visitor's attention */ });
    } catch (e) { /* old browser: no count */ }
  }

  function readState() {
    try { return JSON.parse(window.localStorage.getItem(storageKey) || "{}") || {}; } catch (e) { return {}; }
  }

  function writeState(changes) {
    try {
      var state = readState();
      Object.keys(changes).forEach(function (k) { state[k] = changes[k]; });
      window.localStorage.setItem(storageKey, JSON.stringify(state));
    } catch (e) { /* storage disabled: the cap is best effort */ }
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] === true) { node.setAttribute(k, ""); }
      else if (attrs[k] !== false && attrs[k] != null) { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function makeHost() {
    // A custom element name: generic rules (div, section ...) of the host page do not match it.
    var host = document.createElement("envoi-form");
    host.setAttribute("data-envoi-slug", slug);
    host.style.cssText = "all:initial !important;display:block !important;";
    return host;
  }

  function buildForm(def, t, onSuccess) {
    var form = el("form", { novalidate: true, action: formUrl, method: "post" });
    var uid = "envoi-" + slug + "-";
    var inputs = {};
    var errors = {};
    def.fields.forEach(function (f) {
      var id = uid + f.name;
      var type = ["email", "tel", "date", "number", "checkbox"].indexOf(f.type) >= 0 ? f.type : "text";
      var input = el("input", {
        id: id, name: f.name, type: type, required: !!f.required, "aria-required": f.required ? "true" : null,
        autocomplete: { email: "email", phone: "tel", first_name: "given-name", last_name: "family-name",
                        postal_code: "postal-code", city: "address-level2", country: "country-name" }[f.name] || null,
        value: type === "checkbox" ? "1" : null,
        "aria-describedby": uid + f.name + "-error"
      });
      var label = el("label", { "for": id }, [f.label + (f.required ? " *" : "")]);
      var error = el("p", { id: uid + f.name + "-error", "class": "error", hidden: true });
      inputs[f.name] = input;
      errors[f.name] = error;
      form.appendChild(type === "checkbox"
        ? el("div", { "class": "field check" }, [input, label, error])
        : el("div", { "class": "field" }, [label, input, error]));
    });
    // Honeypot: invisible to people and to assistive technology, filled by naive bots.
    var hp = def.honeypot || "website";
    form.appendChild(el("div", { "class": "hp", "aria-hidden": "true" }, [
      el("label", { "for": uid + hp }, [hp]),
      el("input", { id: uid + hp, name: hp, type: "text", tabindex: "-1", autocomplete: "off" })
    ]));
    form.appendChild(el("input", { type: "hidden", name: "_token", value: def.token }));
    if (def.consent_text) { form.appendChild(el("p", { "class": "consent" }, [def.consent_text])); }
    var submit = el("button", { type: "submit", "class": "submit" }, [def.submit_label || "OK"]);
    var status = el("p", { "class": "status", role: "status", "aria-live": "polite" });
    form.appendChild(submit);
    form.appendChild(status);

    function clearErrors() {
      Object.keys(errors).forEach(function (name) {
        errors[name].hidden = true;
        errors[name].textContent = "";
        inputs[name].removeAttribute("aria-invalid");
      });
      status.textContent = "";
    }

    function showErrors(body) {
      var fields = (body && body.fields) || {};
      var first = null;
      var other = [];
      Object.keys(fields).forEach(function (name) {
        if (errors[name]) {
          errors[name].textContent = fields[name];
          errors[name].hidden = false;
          inputs[name].setAttribute("aria-invalid", "true");
          first = first || inputs[name];
        } else {
          other.push(fields[name]);
        }
      });
      status.textContent = other.length ? other.join(" ") : (first ? "" : ((body && body.error) || t.failed));
      if (first) { first.focus(); }
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors();
      submit.disabled = true;
      status.textContent = t.sending;
      fetch(formUrl, {
        method: "POST", body: new FormData(form), mode: "cors", credentials: "omit",
        headers: { Accept: "application/json" }
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          submit.disabled = false;
          if (response.ok) {
            onSuccess(body);
          } else if (response.status === 429) {
            status.textContent = (body && body.error) || t.tooMany;
          } else {
            showErrors(body);
          }
        });
      }).catch(function () {
        submit.disabled = false;
        status.textContent = t.failed;
      });
    });
    return { form: form, inputs: inputs };
  }

  function render(def) {
    var t = TEXT[(def.lang || "en").slice(0, 2)] || TEXT.en;
    var popup = def.popup || {};
    var trigger = popup.trigger || "inline";
    var host = makeHost();
    var root = host.attachShadow({ mode: "open" });
    root.appendChild(el("style", {}, [CSS]));
    var wrapper = el("div", { "class": "envoi", lang: def.lang || null });
    root.appendChild(wrapper);
    var titleId = "envoi-" + slug + "-title";
    var panel = el("div", { "class": "panel" }, [el("h2", { id: titleId }, [def.title])]);

    var built = buildForm(def, t, function (body) {
      writeState({ signed_up_at: Date.now() });
      mark("signed-up");
      var message = el("p", { "class": "success", role: "status" }, [body.message || def.success_message || ""]);
      built.form.replaceWith(message);
      if (body.redirect_url) { window.location.assign(body.redirect_url); }
    });
    panel.appendChild(built.form);

    if (trigger === "inline") {
      wrapper.appendChild(panel);
      var target = document.querySelector('[data-envoi-form="' + slug.replace(/["\\]/g, "") + '"]');
      if (target) { target.appendChild(host); }
      else if (script.parentNode && document.body && document.body.contains(script)) { script.parentNode.insertBefore(host, script); }
      else { document.body.appendChild(host); }
      mark("inline");
      countView("inline");
      return;
    }

    var state = readState();
    if (state.signed_up_at) { mark("signed-up"); return; }
    var capMs = (Number(popup.frequency_days) || 0) * DAY_MS;
    if (state.closed_at && Date.now() - state.closed_at < capMs) { mark("capped"); return; }

    var dialog = el("dialog", { "aria-labelledby": titleId, "aria-modal": "true" });
    var close = el("button", { type: "button", "class": "close", "aria-label": t.close, title: t.close }, ["×"]);
    panel.insertBefore(close, panel.firstChild);
    dialog.appendChild(panel);
    wrapper.appendChild(dialog);
    host.setAttribute("data-envoi-popup", trigger);
    document.body.appendChild(host);

    var opened = false;
    var previousFocus = null;
    function open() {
      if (opened) { return; }
      opened = true;
      detach();
      previousFocus = document.activeElement;
      dialog.showModal();
      var firstInput = built.form.querySelector("input:not([type=hidden]):not([tabindex='-1'])");
      if (firstInput) { firstInput.focus(); }
      host.setAttribute("data-envoi-open", "");
      mark("open");
      countView("popup");
    }
    function onClose() {
      host.removeAttribute("data-envoi-open");
      if (!readState().signed_up_at) { writeState({ closed_at: Date.now() }); mark("closed"); }
      if (previousFocus && previousFocus.focus) { previousFocus.focus(); }
    }
    close.addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", onClose);  // close button, Escape (cancel), form done
    dialog.addEventListener("click", function (event) {  // a click on the backdrop closes
      if (event.target === dialog) { dialog.close(); }
    });

    var timer = null;
    function onMouseOut(event) {
      // Exit intent: the pointer leaves the document through the top edge.
      if (!event.relatedTarget && event.clientY <= 0) { open(); }
    }
    function onScroll() {
      var doc = document.documentElement;
      var scrollable = Math.max(doc.scrollHeight - window.innerHeight, 1);
      var depth = (window.scrollY || doc.scrollTop) / scrollable * 100;
      if (depth >= (Number(popup.scroll_percent) || 0)) { open(); }
    }
    function detach() {
      if (timer) { clearTimeout(timer); }
      document.removeEventListener("mouseout", onMouseOut);
      window.removeEventListener("scroll", onScroll);
    }
    if (trigger === "exit") { document.addEventListener("mouseout", onMouseOut); }
    else if (trigger === "scroll") { window.addEventListener("scroll", onScroll, { passive: true }); }
    else { timer = setTimeout(open, Math.max(Number(popup.delay_seconds) || 0, 0) * 1000); }
    mark("waiting");
  }

  function start() {
    fetch(formUrl, { headers: { Accept: "application/json" }, mode: "cors", credentials: "omit" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(render)
      .catch(function (err) {
        mark("error");
        if (window.console) { console.warn("Envoi form " + slug + ": " + err.message); }
      });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
})(__ENVOI_SLUG__);
