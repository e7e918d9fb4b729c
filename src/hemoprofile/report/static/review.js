// CTC review page: decisions per candidate, sortable columns, CSV export. No network, no libraries.
(function () {
  "use strict";
  var body = document.body;
  var slide = body.dataset.slide;
  var storeKey = "hemoprofile-review:" + slide + ":" + body.dataset.candidates;
  var rows = Array.prototype.slice.call(document.querySelectorAll("#candidates tbody tr"));
  var state = {};

  function load() {
    try {
      var saved = window.localStorage && window.localStorage.getItem(storeKey);
      if (saved) { state = JSON.parse(saved) || {}; }
    } catch (e) { state = {}; }
  }
  function save() {
    try { if (window.localStorage) { window.localStorage.setItem(storeKey, JSON.stringify(state)); } } catch (e) { /* private mode: keep in memory */ }
  }
  function show(tr) {
    var d = state[tr.dataset.cellId];
    if (d && d.decision) { tr.dataset.decision = d.decision; } else { delete tr.dataset.decision; }
    var note = tr.querySelector("td.note input");
    if (note && d && typeof d.note === "string" && note.value !== d.note) { note.value = d.note; }
  }
  function count() {
    var n = { CTC: 0, not_CTC: 0, unsure: 0 };
    Object.keys(state).forEach(function (k) { if (state[k].decision) { n[state[k].decision] += 1; } });
    var decided = n.CTC + n.not_CTC + n.unsure;
    document.getElementById("progress").textContent = decided + " of " + rows.length + " decided: " + n.CTC +
      " CTC, " + n.not_CTC + " not CTC, " + n.unsure + " unsure";
    body.dataset.decided = String(decided);
  }
  function decide(tr, decision) {
    var id = tr.dataset.cellId;
    var d = state[id] || {};
    d.decision = d.decision === decision ? "" : decision;  // a second click on the same button clears it
    d.time = new Date().toISOString();
    state[id] = d;
    show(tr); save(); count();
  }
  function csvField(v) {
    var s = v === undefined || v === null ? "" : String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function csv() {
    var reviewer = document.getElementById("reviewer").value.trim();
    var lines = ["slide,cell_id,decision,note,reviewer,time"];
    rows.slice().sort(function (a, b) { return Number(a.dataset.rank) - Number(b.dataset.rank); })
      .forEach(function (tr) {
        var d = state[tr.dataset.cellId];
        if (!d || !d.decision) { return; }
        lines.push([slide, tr.dataset.cellId, d.decision, d.note || "", reviewer, d.time || ""].map(csvField).join(","));
      });
    return lines.join("\n") + "\n";
  }
  function exportCsv() {
    var text = csv();
    body.dataset.lastExport = String(text.split("\n").length - 2);
    var url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    var a = document.createElement("a");
    a.href = url; a.download = slide + ".csv";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }
  function parseCsv(text) {  // RFC 4180: quoted fields may hold commas, quotes ("") and newlines
    var records = [], record = [], field = "", quoted = false, i, c;
    for (i = 0; i < text.length; i += 1) {
      c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i += 1; } else if (c === '"') { quoted = false; } else { field += c; }
      } else if (c === '"') { quoted = true; } else if (c === ",") { record.push(field); field = ""; } else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") { i += 1; }
        record.push(field); records.push(record); record = []; field = "";
      } else { field += c; }
    }
    if (field !== "" || record.length) { record.push(field); records.push(record); }
    return records.filter(function (r) { return r.length > 1 || r[0] !== ""; });
  }
  function loadCsv(text) {
    var records = parseCsv(text), head = records.shift() || [];
    var col = {}; head.forEach(function (h, k) { col[h.trim()] = k; });
    var onPage = {}; rows.forEach(function (tr) { onPage[tr.dataset.cellId] = true; });
    var loaded = 0, skipped = 0, names = { "ctc": "CTC", "not_ctc": "not_CTC", "not ctc": "not_CTC", "unsure": "unsure" };
    records.forEach(function (r) {
      var id = String(Number(r[col.cell_id])), decision = names[String(r[col.decision] || "").trim().toLowerCase()];
      if (String(r[col.slide]).trim() !== slide || !onPage[id] || !decision) { skipped += 1; return; }
      state[id] = { decision: decision, note: col.note !== undefined ? r[col.note] : "", time: col.time !== undefined ? r[col.time] : "" };
      loaded += 1;
    });
    var reviewer = document.getElementById("reviewer");
    if (col.reviewer !== undefined && records.length && !reviewer.value) { reviewer.value = records[0][col.reviewer] || ""; }
    save(); rows.forEach(show); count();
    document.getElementById("loaded").textContent = "loaded " + loaded + " decision(s)" + (skipped ? ", skipped " + skipped +
      " (another slide, a cell not on this page, or an unknown decision)" : "");
    body.dataset.loaded = String(loaded);
  }
  function sortBy(th) {
    var table = document.getElementById("candidates");
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = !th.classList.contains("sorted-asc");
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var numeric = th.dataset.type === "num";
    var tbody = table.tBodies[0];
    rows.slice().sort(function (a, b) {
      var x = a.children[index].dataset.v, y = b.children[index].dataset.v;
      if (x === undefined) { x = a.children[index].textContent; }
      if (y === undefined) { y = b.children[index].textContent; }
      var c = numeric ? Number(x) - Number(y) : String(x).localeCompare(String(y));
      if (c === 0) { c = Number(a.dataset.rank) - Number(b.dataset.rank); }
      return asc ? c : -c;
    }).forEach(function (tr) { tbody.appendChild(tr); });
  }

  function pinHeader() {  // the table's header row sticks just below the page header, whatever its height
    document.documentElement.style.setProperty("--head", document.querySelector("header").offsetHeight + "px");
  }
  pinHeader();
  window.addEventListener("resize", pinHeader);
  window.addEventListener("load", pinHeader);
  if (window.ResizeObserver) { new ResizeObserver(pinHeader).observe(document.querySelector("header")); }
  load();
  rows.forEach(function (tr) {
    show(tr);
    Array.prototype.forEach.call(tr.querySelectorAll("td.decide button"), function (b) {
      b.addEventListener("click", function () { decide(tr, b.dataset.decision); });
    });
    var note = tr.querySelector("td.note input");
    note.addEventListener("input", function () {
      var d = state[tr.dataset.cellId] || { decision: "" };
      d.note = note.value; state[tr.dataset.cellId] = d; save();
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("#candidates thead th[data-type]"), function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  document.getElementById("export").addEventListener("click", exportCsv);
  document.getElementById("load").addEventListener("change", function (e) {
    var file = e.target.files && e.target.files[0];
    if (!file) { return; }
    var reader = new FileReader();
    reader.onload = function () { loadCsv(String(reader.result)); e.target.value = ""; };
    reader.readAsText(file);
  });
  document.getElementById("clear").addEventListener("click", function () {
    if (window.confirm("Clear every decision on this page?")) { state = {}; save(); rows.forEach(show); count(); }
  });
  count();
  body.dataset.reviewScript = "ready";
}());
