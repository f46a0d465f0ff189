/* Envoi admin: progressive enhancement only. Every page works without this file; with it,
 * progress refreshes itself, snippets copy, the SMS counter and the segment count are live,
 * and segments get a rule builder that reads and writes the JSON shown next to it. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body)
    }).then(function (r) { return r.json().then(function (data) { return { ok: r.ok, data: data }; }); });
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  /* Sections marked data-refresh="ms" reload themselves from the same URL until they stop asking. */
  function refresh(section) {
    var ms = Number(section.getAttribute("data-refresh")) || 3000;
    setTimeout(function () {
      fetch(window.location.href, { credentials: "same-origin" }).then(function (r) { return r.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(section.id);
          if (!fresh) { return; }
          section.replaceWith(fresh);
          if (fresh.hasAttribute("data-refresh")) { refresh(fresh); }
        }).catch(function () { refresh(section); });
    }, ms);
  }
  document.querySelectorAll("[data-refresh][id]").forEach(refresh);

  /* Copy buttons. */
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.querySelector(button.getAttribute("data-copy"));
      var text = target ? target.textContent : "";
      var done = function () { button.setAttribute("data-copied", ""); };
      if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done, done); }
      else {
        var range = document.createRange(); range.selectNodeContents(target);
        var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
        try { document.execCommand("copy"); } catch (e) { /* selected: the user can copy */ }
        done();
      }
    });
  });

  /* Confirmations on destructive forms and buttons. */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var message = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  /* datetime-local inputs are the browser's time: send its offset along. */
  document.querySelectorAll("[data-tz-offset]").forEach(function (input) {
    input.value = String(new Date().getTimezoneOffset());
  });

  /* Live SMS counter. */
  document.querySelectorAll("textarea[data-sms-counter]").forEach(function (area) {
    var out = document.querySelector(area.getAttribute("data-sms-counter"));
    var update = debounce(function () {
      postJSON("/admin/campaigns/sms-info", { body: area.value }).then(function (res) {
        if (res.ok && out) {
          out.textContent = res.data.characters + " chars · " + res.data.encoding + " · " + res.data.segments + " SMS";
          out.setAttribute("data-segments", res.data.segments);
        }
      });
    }, 250);
    area.addEventListener("input", update);
  });

  /* Preview as a contact without reloading the page. */
  var previewForm = document.getElementById("preview-form");
  var previewFrame = document.getElementById("preview");
  if (previewForm && previewFrame) {
    previewForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var url = new URL(previewFrame.src, window.location.href);
      var id = previewForm.elements.contact_id.value;
      if (id) { url.searchParams.set("contact_id", id); } else { url.searchParams.delete("contact_id"); }
      previewFrame.src = url.toString();
    });
  }

  /* Form editor: the hosted page and the popup follow the unsaved fields (GET previews that
   * change nothing; location.replace keeps them out of the back button's history). */
  var editor = document.getElementById("form-editor");
  var hostedFrame = document.getElementById("form-preview");
  if (editor && hostedFrame && hostedFrame.getAttribute("data-live")) {
    var popupFrame = document.getElementById("popup-preview");
    var popupBox = document.getElementById("popup-preview-box");
    var summary = document.getElementById("preview-summary");
    var liveUrl = function (frame, params) {
      var url = new URL(frame.getAttribute("data-live"), window.location.href);
      params.forEach(function (value, key) { url.searchParams.append(key, value); });
      return url.toString();
    };
    var checkedLabels = function (name) {
      return Array.prototype.filter.call(editor.querySelectorAll('input[name="' + name + '"]'), function (box) {
        return box.checked;
      }).map(function (box) { return box.parentNode.textContent.trim(); });
    };
    var updatePreviews = debounce(function () {
      var params = new URLSearchParams(new FormData(editor));
      params.delete("_csrf");
      hostedFrame.contentWindow.location.replace(liveUrl(hostedFrame, params));
      var trigger = editor.elements.popup_trigger.value;
      popupBox.hidden = trigger === "inline";
      if (!popupBox.hidden) { popupFrame.contentWindow.location.replace(liveUrl(popupFrame, params)); }
      var channels = checkedLabels("channels");
      var topics = checkedLabels("topics");
      summary.textContent = summary.getAttribute("data-label") + ": " + channels.concat(topics).join(", ") +
        " · popup: " + trigger;
    }, 400);
    editor.addEventListener("input", updatePreviews);
    editor.addEventListener("change", updatePreviews);
    if (!hostedFrame.getAttribute("src")) { updatePreviews(); }  /* a new form: preview its defaults */
  }

  /* ------------------------------------------------------------------ segment rule builder */
  var root = document.getElementById("builder");
  var jsonArea = document.getElementById("rules-json");
  if (!root || !jsonArea) { return; }
  var catalog = JSON.parse(root.getAttribute("data-catalog"));
  var T = JSON.parse(root.getAttribute("data-t"));
  var fieldNames = Object.keys(catalog.fields).sort();
  var rules;
  var countEl = document.getElementById("segment-count");
  var errorEl = document.getElementById("segment-error");
  var sampleEl = document.getElementById("segment-sample");

  function isGroup(node) {
    return node && typeof node === "object" && !Array.isArray(node) && Object.keys(node).length === 1 &&
      (Array.isArray(node.all) || Array.isArray(node.any));
  }
  function isCondition(node) { return node && typeof node === "object" && "field" in node; }
  function isNot(node) {
    return node && typeof node === "object" && !Array.isArray(node) && Object.keys(node).length === 1 &&
      node.not && typeof node.not === "object" && !Array.isArray(node.not);
  }
  /* The other rule kinds of the grammar (segments/rules.py): {"purchases": {...}}, {"rfm": {...}} ... */
  var RULE_KINDS = ["purchases", "rfm", "engagement", "subscription"];
  function ruleKind(node) {
    if (!node || typeof node !== "object" || Array.isArray(node)) { return null; }
    var keys = Object.keys(node);
    var inner = node[keys[0]];
    return keys.length === 1 && RULE_KINDS.indexOf(keys[0]) >= 0 && inner && typeof inner === "object" &&
      !Array.isArray(inner) ? keys[0] : null;
  }
  function days(key) { return { key: key, type: "int", placeholder: T.days }; }
  var SPECS = {
    purchases: [{ key: "sku", type: "list", placeholder: "SKU, SKU" }, { key: "category", type: "list" },
                days("within_days"), days("older_than_days"), { key: "count", type: "cmp" },
                { key: "amount", type: "cmp" }],
    rfm: [{ key: "group", type: "list", choices: catalog.rfm_groups }].concat(catalog.rfm_dimensions.map(function (d) {
      return { key: d, type: "cmp", placeholder: "1-5" };
    })),
    engagement: [{ key: "kind", type: "choice", choices: catalog.event_kinds, required: true },
                 { key: "channel", type: "choice", choices: catalog.channels }, { key: "campaign_id", type: "int" },
                 days("within_days"), days("older_than_days")],
    subscription: [{ key: "channel", type: "choice", choices: catalog.channels },
                   { key: "status", type: "choice", choices: function (o) { return catalog.statuses[o.channel] || []; } },
                   { key: "topic", type: "choice", choices: catalog.topics }]
  };
  var DEFAULTS = {
    purchases: function () { return { within_days: 90 }; },
    rfm: function () { return { group: catalog.rfm_groups[0] }; },
    engagement: function () { return { kind: "opened", within_days: 30 }; },
    subscription: function () { return { channel: "email", status: "confirmed" }; }
  };
  function number(s) {
    s = s.trim();
    return s === "" || isNaN(Number(s)) ? s : Number(s);
  }
  function listOf(text) { return text.split(",").map(function (x) { return x.trim(); }).filter(Boolean); }
  function kindOf(field) { return catalog.fields[field] || "string"; }
  function noValue(op) { return op === "is_set" || op === "is_not_set"; }

  function valueText(cond) {
    var v = cond.value;
    if (Array.isArray(v)) { return v.join(", "); }
    return v === undefined || v === null ? "" : String(v);
  }
  function parseValue(kind, op, text) {
    function one(s) {
      s = s.trim();
      if (kind === "number" || op === "within_days" || op === "older_than_days") {
        return s === "" || isNaN(Number(s)) ? s : Number(s);
      }
      if (kind === "boolean") { return s === "true"; }
      return s;
    }
    if (op === "in" || op === "not_in" || op === "between") {
      return text.split(",").filter(function (s) { return s.trim() !== ""; }).map(one);
    }
    return one(text);
  }

  function conditionRow(cond, onChange, onRemove) {
    var row = el("div", { "class": "cond", role: "group", "aria-label": "condition" });
    var fieldSel = el("select", { "class": "field", "aria-label": "field" });
    fieldNames.forEach(function (f) {
      var o = el("option", { value: f, text: f }); if (f === cond.field) { o.selected = true; } fieldSel.appendChild(o);
    });
    var opSel = el("select", { "class": "op", "aria-label": "operator" });
    var valueIn = el("input", { type: "text", "class": "value", "aria-label": "value" });
    function fillOps() {
      opSel.innerHTML = "";
      (catalog.ops[kindOf(cond.field)] || []).forEach(function (op) {
        var o = el("option", { value: op, text: op.replace(/_/g, " ") }); if (op === cond.op) { o.selected = true; }
        opSel.appendChild(o);
      });
      if (!cond.op || (catalog.ops[kindOf(cond.field)] || []).indexOf(cond.op) < 0) { cond.op = opSel.value; }
      valueIn.hidden = noValue(cond.op);
      valueIn.placeholder = cond.op === "between" ? "min, max" : (cond.op === "in" || cond.op === "not_in") ? "a, b, c" : "";
    }
    valueIn.value = valueText(cond);
    fillOps();
    fieldSel.addEventListener("change", function () { cond.field = fieldSel.value; fillOps(); sync(); onChange(); });
    opSel.addEventListener("change", function () { cond.op = opSel.value; valueIn.hidden = noValue(cond.op); sync(); onChange(); });
    valueIn.addEventListener("input", function () { sync(); onChange(); });
    function sync() {
      if (noValue(cond.op)) { delete cond.value; } else { cond.value = parseValue(kindOf(cond.field), cond.op, valueIn.value); }
    }
    var remove = el("button", { type: "button", "class": "remove", title: T.remove, "aria-label": T.remove, text: "×" });
    remove.addEventListener("click", onRemove);
    row.appendChild(fieldSel); row.appendChild(opSel); row.appendChild(valueIn); row.appendChild(remove);
    return row;
  }

  /* One purchases / rfm / engagement / subscription rule: an input per key of its object; an
   * empty input drops the key. `obj` is the rule's inner object, changed in place. */
  function kindRow(kind, obj, onChange, onRemove) {
    var row = el("div", { "class": "cond rule-" + kind, role: "group", "aria-label": kind });
    function part(spec) {
      var name = kind + "." + spec.key;
      var v = obj[spec.key];
      var label = el("label", { "class": "part" }, [spec.key.replace(/_/g, " ") + " "]);
      if (spec.type === "choice") {
        var sel = el("select", { "aria-label": name });
        var choices = typeof spec.choices === "function" ? spec.choices(obj) : spec.choices;
        if (!spec.required) { sel.appendChild(el("option", { value: "", text: "—" })); }
        choices.forEach(function (c) { sel.appendChild(el("option", { value: c, text: c })); });
        sel.value = v === undefined ? "" : String(v);
        sel.addEventListener("change", function () {
          if (sel.value === "") { delete obj[spec.key]; } else { obj[spec.key] = sel.value; }
          if (kind === "subscription" && spec.key === "channel") {
            if (sel.value === "") { delete obj.status; } else if (!obj.status) { obj.status = "confirmed"; }
          }
          draw(); onChange();
        });
        label.appendChild(sel);
      } else if (spec.type === "cmp") {
        var opSel = el("select", { "aria-label": name + ".op" }, [el("option", { value: "", text: "—" })]);
        catalog.compare_ops.forEach(function (op) { opSel.appendChild(el("option", { value: op, text: op.replace(/_/g, " ") })); });
        var val = el("input", { type: "text", "class": "value", "aria-label": name + ".value", placeholder: spec.placeholder || "" });
        opSel.value = v && v.op ? v.op : "";
        val.value = v && v.value !== undefined ? (Array.isArray(v.value) ? v.value.join(", ") : String(v.value)) : "";
        var sync = function () {
          if (!opSel.value) { delete obj[spec.key]; onChange(); return; }
          var many = ["in", "not_in", "between"].indexOf(opSel.value) >= 0;
          obj[spec.key] = { op: opSel.value, value: many ? listOf(val.value).map(number) : number(val.value) };
          onChange();
        };
        opSel.addEventListener("change", sync); val.addEventListener("input", sync);
        label.appendChild(opSel); label.appendChild(val);
      } else {
        var input = el("input", { type: spec.type === "int" ? "number" : "text", "aria-label": name,
                                  placeholder: spec.placeholder || "" });
        if (spec.choices) {
          var listId = "choices-" + name.replace(/\W/g, "-");
          if (!document.getElementById(listId)) {
            root.parentNode.appendChild(el("datalist", { id: listId }, spec.choices.map(function (c) {
              return el("option", { value: c });
            })));
          }
          input.setAttribute("list", listId);
          input.placeholder = spec.choices.slice(0, 3).join(", ") + "…";
        }
        input.value = v === undefined ? "" : (Array.isArray(v) ? v.join(", ") : String(v));
        input.addEventListener("input", function () {
          if (spec.type === "int") {
            if (input.value.trim() === "") { delete obj[spec.key]; } else { obj[spec.key] = number(input.value); }
          } else {
            var items = listOf(input.value);
            if (!items.length) { delete obj[spec.key]; } else { obj[spec.key] = items.length === 1 ? items[0] : items; }
          }
          onChange();
        });
        label.appendChild(input);
      }
      return label;
    }
    var body = el("span", { "class": "parts" });  /* redrawn when a choice changes the others */
    function draw() {
      body.innerHTML = "";
      body.appendChild(el("span", { "class": "kind", text: T[kind] || kind }));
      SPECS[kind].forEach(function (spec) { body.appendChild(part(spec)); });
    }
    draw();
    var remove = el("button", { type: "button", "class": "remove", title: T.remove, "aria-label": T.remove, text: "×" });
    remove.addEventListener("click", onRemove);
    row.appendChild(body);
    row.appendChild(remove);
    return row;
  }

  function groupBox(group, onChange, onRemove) {
    var mode = Array.isArray(group.all) ? "all" : "any";
    var box = el("div", { "class": "group", role: "group", "aria-label": mode });
    var head = el("div", { "class": "group-head" });
    var modeSel = el("select", { "class": "mode", "aria-label": "match" },
      [el("option", { value: "all", text: T.all }), el("option", { value: "any", text: T.any })]);
    modeSel.value = mode;
    modeSel.addEventListener("change", function () {
      var items = group[mode]; delete group[mode]; mode = modeSel.value; group[mode] = items; onChange();
    });
    head.appendChild(modeSel);
    if (onRemove) {
      var rm = el("button", { type: "button", "class": "remove", title: T.remove, "aria-label": T.remove, text: "×" });
      rm.addEventListener("click", onRemove); head.appendChild(rm);
    }
    box.appendChild(head);
    var list = el("div", { "class": "children" });
    box.appendChild(list);
    function draw() {
      list.innerHTML = "";
      group[mode].forEach(function (child, i) {
        var removeChild = function () { group[mode].splice(i, 1); draw(); onChange(); };
        var negated = isNot(child);
        var inner = negated ? child.not : child;
        var node = null;
        if (isGroup(inner)) { node = groupBox(inner, onChange, removeChild); }
        else if (isCondition(inner)) { node = conditionRow(inner, onChange, removeChild); }
        else if (ruleKind(inner)) { node = kindRow(ruleKind(inner), inner[ruleKind(inner)], onChange, removeChild); }
        if (node) {
          /* "not": the rule is wrapped in {"not": rule}, or unwrapped. */
          var negate = el("input", { type: "checkbox", "class": "negate", "aria-label": T.not });
          negate.checked = negated;
          negate.addEventListener("change", function () {
            group[mode][i] = negate.checked ? { not: inner } : inner; draw(); onChange();
          });
          var where = node.querySelector(".group-head") || node;
          where.insertBefore(el("label", { "class": "part not" }, [negate, " " + T.not]), where.firstChild);
          if (negated) { node.classList.add("negated"); }
          list.appendChild(node);
        }
        else {
          var raw = el("div", { "class": "cond raw" }, [el("code", { text: JSON.stringify(child) })]);
          var rm2 = el("button", { type: "button", "class": "remove", "aria-label": T.remove, text: "×" });
          rm2.addEventListener("click", removeChild); raw.appendChild(rm2); list.appendChild(raw);
        }
      });
    }
    draw();
    var add = el("button", { type: "button", "class": "add-condition", text: "+ " + T.add });
    add.addEventListener("click", function () {
      group[mode].push({ field: "email_status", op: "eq", value: "confirmed" }); draw(); onChange();
    });
    var addGroup = el("button", { type: "button", "class": "add-group", text: "+ " + T.group });
    addGroup.addEventListener("click", function () {
      group[mode].push({ any: [{ field: "city", op: "eq", value: "" }] }); draw(); onChange();
    });
    var addKinds = RULE_KINDS.map(function (kind) {
      var button = el("button", { type: "button", "class": "add-" + kind, text: "+ " + (T[kind] || kind) });
      button.addEventListener("click", function () {
        var rule = {}; rule[kind] = DEFAULTS[kind](); group[mode].push(rule); draw(); onChange();
      });
      return button;
    });
    box.appendChild(el("div", { "class": "group-actions" }, [add].concat(addKinds, [addGroup])));
    return box;
  }

  var recount = debounce(function () {
    postJSON(root.getAttribute("data-preview"), { rules: rules }).then(function (res) {
      if (!res.ok) {
        countEl.textContent = "–";
        var f = res.data.fields || {};
        errorEl.textContent = (res.data.error || "invalid") + " " + Object.keys(f).map(function (k) { return k + ": " + f[k]; }).join("; ");
        return;
      }
      errorEl.textContent = "";
      countEl.textContent = String(res.data.count);
      sampleEl.innerHTML = "";
      res.data.sample.forEach(function (c) {
        sampleEl.appendChild(el("li", {}, [el("a", { href: c.url, text: c.email || c.phone || ("#" + c.id) }), c.name ? " " + c.name : ""]));
      });
    });
  }, 300);

  function changed() {
    jsonArea.value = JSON.stringify(rules, null, 2);
    recount();
  }
  function load(value) {
    rules = isGroup(value) ? value : { all: value && Object.keys(value).length ? [value] : [] };
    root.innerHTML = "";
    root.appendChild(groupBox(rules, changed, null));
  }
  jsonArea.addEventListener("input", debounce(function () {
    try { load(JSON.parse(jsonArea.value)); errorEl.textContent = ""; recount(); }
    catch (e) { errorEl.textContent = "JSON: " + e.message; }
  }, 400));
  try { load(JSON.parse(jsonArea.value)); } catch (e) { load({ all: [] }); }
  recount();
})();
