"use strict";
// The upload-and-predict page. Talks only to its own server (same origin); no external resources.
(function () {
  const $ = (id) => document.getElementById(id);
  const PARALLEL = 4;
  let info = null;
  let busy = false;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function setState(state) { document.body.setAttribute("data-state", state); }
  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    setState("error");
    busy = false;
  }
  function status(text, done, total) {
    $("progress").hidden = false;
    $("status").textContent = text;
    const bar = $("progress-bar");
    if (total) { bar.max = total; bar.value = done; } else { bar.removeAttribute("value"); }
  }
  function mib(n) { return n >= 1024 ** 3 ? (n / 1024 ** 3).toFixed(1) + " GiB" : (n / 1024 ** 2).toFixed(1) + " MiB"; }
  function pct(x) { return (100 * x).toFixed(1) + " %"; }
  function fmt(m) {
    if (!m || m.value === null || m.value === undefined) return "n/a";
    let s = m.value.toFixed(2);
    if (m.ci95) s += " (95 % CI " + m.ci95[0].toFixed(2) + "–" + m.ci95[1].toFixed(2) + ")";
    return s;
  }

  async function api(method, url, body, headers) {
    const response = await fetch(url, { method, body, headers, credentials: "same-origin", cache: "no-store" });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error((data && data.error) || (response.status + " " + response.statusText));
    return data;
  }

  async function loadInfo() {
    info = await api("GET", "/api/info");
    const c = info.classifier || {}, p = info.patient_model || {};
    $("models").textContent = "cell classifier " + (c.file || "?") + " (id " + (c.model_id || "?") + ", " +
      (c.classes || []).length + " types) · patient model trained on " + (p.n_patients ?? "?") +
      " patients (" + [p.control_label].concat(p.subtypes || []).join(", ") + ") · " + (info.device || "");
    $("limits").textContent = "Limits: " + info.limits.text + ".";
  }

  // --- collecting files ---------------------------------------------------------------------------------
  function relativeName(file) {
    const name = file.webkitRelativePath || file.relativePath || file.name;
    return name.replace(/^\/+/, "");
  }
  function readEntries(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  }
  async function walk(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      file.relativePath = prefix + file.name;
      out.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch = await readEntries(reader); batch.length; batch = await readEntries(reader)) {
        for (const child of batch) await walk(child, prefix + entry.name + "/", out);
      }
    }
  }
  async function droppedFiles(event) {
    const items = Array.from(event.dataTransfer.items || []);
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)).filter(Boolean);
    if (!entries.length) return Array.from(event.dataTransfer.files || []);
    const out = [];
    for (const entry of entries) await walk(entry, "", out);
    return out;
  }

  // --- uploading ------------------------------------------------------------------------------------------
  async function run(files) {
    if (busy) return;
    if (!files.length) { showError("Nothing to upload: the folder or selection is empty."); return; }
    busy = true;
    $("error").hidden = true;
    $("result").hidden = true;
    setState("uploading");
    const zips = files.filter((f) => /\.zip$/i.test(f.name));
    const images = files.filter((f) => !/\.zip$/i.test(f.name));
    const limits = info.limits;
    const total = files.reduce((s, f) => s + f.size, 0);
    if (zips.length > 1) { showError("One zip per patient: " + zips.length + " zips were chosen."); return; }
    const tooBig = files.find((f) => f.size > limits.max_upload_bytes);
    if (tooBig) { showError(relativeName(tooBig) + " is " + mib(tooBig.size) + ", over the upload limit of " + mib(limits.max_upload_bytes) + "."); return; }
    if (images.length > limits.max_files) { showError(images.length + " files: over the limit of " + limits.max_files + " files per patient."); return; }
    if (total > limits.max_unpacked_bytes) { showError("The upload is " + mib(total) + ", over the limit of " + mib(limits.max_unpacked_bytes) + " per patient."); return; }
    try {
      const job = (await api("POST", "/api/jobs")).job;
      let sent = 0;
      status("uploading " + files.length + " file(s)", 0, files.length);
      for (const z of zips) {
        await api("PUT", "/api/jobs/" + job + "/zip", z, { "Content-Type": "application/zip" });
        sent += 1;
        status("uploaded " + sent + " of " + files.length + " file(s)", sent, files.length);
      }
      let next = 0;
      async function worker() {
        while (next < images.length) {
          const file = images[next++];
          const path = relativeName(file).split("/").map(encodeURIComponent).join("/");
          await api("PUT", "/api/jobs/" + job + "/files/" + path, file, { "Content-Type": "application/octet-stream" });
          sent += 1;
          if (sent % 10 === 0 || sent === files.length) status("uploaded " + sent + " of " + files.length + " file(s)", sent, files.length);
        }
      }
      await Promise.all(Array.from({ length: PARALLEL }, worker));
      await api("POST", "/api/jobs/" + job + "/start");
      setState("running");
      await poll(job);
    } catch (err) {
      showError(err.message);
    }
  }

  async function poll(job) {
    for (;;) {
      const s = await api("GET", "/api/jobs/" + job);
      status(s.message, s.done, s.total);
      if (s.state === "done") { show(job, s.result); return; }
      if (s.state === "failed") { showError(s.message); return; }
      await new Promise((r) => setTimeout(r, 400));
    }
  }

  // --- the result -----------------------------------------------------------------------------------------
  function chart(composition) {
    const ns = "http://www.w3.org/2000/svg";
    const rowH = 22, left = 110, width = 300, right = 70;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", left + width + right);
    svg.setAttribute("height", rowH * composition.length + 6);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "cell-type fractions");
    const most = Math.max(1e-9, ...composition.map((c) => c.fraction));
    composition.forEach((c, i) => {
      const y = i * rowH + 3;
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", left - 6); label.setAttribute("y", y + 14); label.setAttribute("text-anchor", "end");
      label.textContent = c.type;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", left); bar.setAttribute("y", y + 2); bar.setAttribute("height", rowH - 6);
      bar.setAttribute("width", Math.max(0, width * c.fraction / most)); bar.setAttribute("fill", "#2f6fc0");
      bar.setAttribute("data-type", c.type);
      const value = document.createElementNS(ns, "text");
      value.setAttribute("x", left + width * c.fraction / most + 5); value.setAttribute("y", y + 14);
      value.textContent = pct(c.fraction);
      svg.append(label, bar, value);
    });
    return svg;
  }

  function predictionRows(prediction, performance) {
    const body = $("prediction-table").tBodies[0];
    body.replaceChildren();
    const stages = (performance && performance.stages) || {};
    const d = (stages.disease || {}).metrics || {}, s = (stages.subtype || {}).metrics || {}, o = (stages.overall || {}).metrics || {};
    // one performance cell per group of rows (rowspan): the stage's cross-validated scores
    function group(rows, perf) {
      rows.forEach(([name, p, cls], i) => {
        const tr = el("tr", cls ? { class: cls } : {});
        tr.append(el("td", {}, name), el("td", { class: "num" }, pct(p)));
        const barCell = el("td");
        const bar = el("span", { class: "pbar" });
        bar.style.width = Math.round(100 * p) + "px";  // CSSOM, which the page's CSP allows (style attributes it does not)
        barCell.append(bar);
        tr.append(barCell);
        if (i === 0) tr.append(el("td", { class: "muted", rowspan: String(rows.length) }, perf));
        body.append(tr);
      });
    }
    group([["disease (any subtype) vs " + prediction.control_label, prediction.p_disease, "p-disease"]],
      "disease vs control: balanced accuracy " + fmt(d.balanced_accuracy) + ", ROC AUC " + fmt(d.roc_auc));
    group(prediction.subtypes.map((sub) => [sub.subtype + " (given disease)", sub.p_given_disease]),
      "subtype: balanced accuracy " + fmt(s.balanced_accuracy) + ", macro F1 " + fmt(s.macro_f1));
    group(prediction.states.map((st) => ["final state " + st.state, st.p, st.state === prediction.predicted_state ? "chosen" : ""]),
      "end to end: accuracy " + fmt(o.accuracy) + ", balanced accuracy " + fmt(o.balanced_accuracy));
    const cv = performance && performance.cv;
    $("cv-note").textContent = "Performance: out-of-fold estimates of the served patient model on its " +
      (performance.n_patients ?? "?") + " training patients" + (cv ? " (" + cv.folds + "-fold cross-validation, " +
      cv.repeats + " repeat(s))" : "") + ", with 95 % bootstrap intervals. A new patient from another lab, stain or " +
      "scanner can fare worse.";
  }

  function show(job, result) {
    busy = false;
    $("summary").textContent = result.n_cells + " cell(s) classified from " + result.n_files + " file(s)" +
      (result.bad_files.length ? "; " + result.bad_files.length + " file(s) could not be used (listed below)." : ".");
    const p = result.prediction;
    if (p) {
      $("predicted-state").textContent = p.predicted_state;
      $("predicted-state").setAttribute("data-p-disease", p.p_disease.toFixed(4));
      predictionRows(p, result.performance);
    } else {
      $("predicted-state").textContent = "none (" + (result.message || "no cells") + ")";
      $("prediction-table").tBodies[0].replaceChildren();
    }
    $("chart").replaceChildren(chart(result.composition));
    const counts = $("counts").tBodies[0];
    counts.replaceChildren();
    for (const c of result.composition) {
      const tr = el("tr", { "data-type": c.type, "data-count": String(c.count) });
      tr.append(el("td", {}, c.type), el("td", { class: "num" }, String(c.count)), el("td", { class: "num" }, pct(c.fraction)));
      counts.append(tr);
    }
    const bad = $("bad-files");
    bad.hidden = !result.bad_files.length;
    const badBody = bad.querySelector("tbody");
    badBody.replaceChildren();
    for (const b of result.bad_files) {
      const tr = el("tr");
      tr.append(el("td", {}, b.path), el("td", {}, b.problem));
      badBody.append(tr);
    }
    const gallery = $("gallery");
    gallery.replaceChildren();
    for (const c of result.composition) {
      const thumbs = (result.gallery || {})[c.type] || [];
      if (!thumbs.length) continue;
      const box = el("div", { class: "gallery-type", "data-type": c.type });
      box.append(el("h4", {}, c.type + " (" + c.count + (thumbs.length < c.count ? ", first " + thumbs.length + " shown" : "") + ")"));
      for (const t of thumbs) {
        const img = el("img", { src: t.src, alt: t.path, title: t.path + " — p = " + t.p.toFixed(3) });
        box.append(img);
      }
      gallery.append(box);
    }
    $("download-cells").href = "/api/jobs/" + job + "/cells.csv";
    $("download-summary").href = "/api/jobs/" + job + "/summary.csv";
    $("result").hidden = false;
    status(result.n_cells + " cell(s) classified", 1, 1);
    setState("done");
  }

  // --- wiring ---------------------------------------------------------------------------------------------
  for (const id of ["folder-input", "files-input", "zip-input"]) {
    $(id).addEventListener("change", (e) => { const files = Array.from(e.target.files); e.target.value = ""; run(files); });
  }
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    try { run(await droppedFiles(e)); } catch (err) { showError(err.message); }
  });
  $("again").addEventListener("click", () => { $("result").hidden = true; $("progress").hidden = true; setState("idle"); });
  loadInfo().then(() => setState("ready")).catch((err) => showError("Cannot reach the server: " + err.message));
})();
