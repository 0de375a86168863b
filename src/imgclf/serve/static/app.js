// The page of imgclf-serve: pick or drop images, POST them to /predict, draw each one's top-k as bars.
// Every text that comes from a file name or the server is set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let settings = { top_k: 5, min_confidence: null, limits: { max_files: 16, max_file_bytes: 10485760 } };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

async function loadCard() {
  try {
    const response = await fetch("/card");
    const card = await response.json();
    settings = card;
    $("model-name").textContent = card.model;
    const names = card.classes.map((c) => (card.display_names && card.display_names[c]) || c);
    const shown = names.length > 12 ? names.slice(0, 12).join(", ") + `, ... (${names.length})` : names.join(", ");
    let text = (card.architecture ? card.architecture + ", " : "") + `${names.length} classes: ${shown}`;
    if (card.test) {
      text += ` | test accuracy ${pct(card.test.accuracy)}`;
      if (card.test.accuracy_ci) {
        const level = Math.round(100 * (card.test.ci_level || 0.95));
        text += ` (${level}% CI ${pct(card.test.accuracy_ci[0])} to ${pct(card.test.accuracy_ci[1])}`;
        text += card.test.samples ? `, ${card.test.samples} images)` : ")";
      }
    } else {
      text += " | no test report for this model";
    }
    $("card").textContent = text;
    const mb = (card.limits.max_file_bytes / 1048576).toFixed(0);
    let limits = `up to ${card.limits.max_files} images per upload, ${mb} MB each; top ${card.top_k} classes shown`;
    if (card.min_confidence !== null) limits += `; flagged below ${pct(card.min_confidence)}`;
    if (card.abstain && card.abstain.threshold !== null) limits += `; "not sure" below ${pct(card.abstain.threshold)}`;
    if (card.abstain && card.abstain.ood_threshold !== null) limits += '; "not sure" for what it was not taught';
    $("limits").textContent = limits;
  } catch (err) {
    $("card").textContent = "the model card could not be loaded: " + err;
  }
}

function placeholder(file) {
  const box = el("article", "result pending");
  const img = el("img");
  img.alt = "";
  img.addEventListener("error", () => img.replaceWith(el("div", "no-preview", "no preview")));
  img.src = URL.createObjectURL(file);  // the preview comes from the local file: nothing is fetched
  box.append(img, el("p", "filename", file.name), el("p", "top-class", "classifying..."));
  return box;
}

function showError(box, message) {
  box.className = "result failed";
  box.querySelector(".top-class").replaceWith(el("p", "error", "error: " + message));
}

function showPredictions(box, result) {
  const top = result.predictions;
  box.className = "result done" + (result.low_confidence || result.not_sure ? " low" : "");
  // "not sure": the model's thresholds chosen on val leave it unanswered; its top guesses are shown instead
  const title = result.not_sure
    ? el("p", "top-class not-sure", result.message || "not sure: top guesses " + top.map((p) => p.name).join(", "))
    : el("p", "top-class", top[0].name);
  if (!result.not_sure) title.dataset.class = top[0].class;
  if (result.low_confidence) {
    title.append(el("span", "flag", `low confidence: below ${pct(settings.min_confidence)}`));
  }
  box.querySelector(".top-class").replaceWith(title);
  for (const [i, p] of top.entries()) {
    const row = el("div", "bar-row" + (i === 0 ? " first" : ""));
    const bar = el("div", "bar");
    const fill = el("div");
    fill.style.width = pct(p.probability);
    bar.append(fill);
    row.append(el("span", "label", p.name), bar, el("span", "pct", pct(p.probability)));
    box.append(row);
  }
}

async function upload(files) {
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const response = await fetch("/predict", { method: "POST", body: form });
  let body;
  try { body = await response.json(); } catch { body = { detail: `HTTP ${response.status}` }; }
  if (!response.ok) return files.map(() => ({ error: body.detail || `HTTP ${response.status}` }));
  return body.results || [body];
}

async function classify(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const boxes = files.map(placeholder);
  $("results").prepend(...boxes);  // the newest upload first, its images in the order picked
  const size = settings.limits.max_files || 16;
  $("status").textContent = `classifying ${files.length} image(s)...`;
  let failed = 0;
  for (let start = 0; start < files.length; start += size) {
    const chunk = files.slice(start, start + size);
    let results;
    try {
      results = await upload(chunk);
    } catch (err) {
      results = chunk.map(() => ({ error: "the server did not answer (" + err + ")" }));
    }
    results.forEach((result, i) => {
      const box = boxes[start + i];
      if (result.error) { failed += 1; showError(box, result.error); } else { showPredictions(box, result); }
    });
  }
  $("status").textContent = `${files.length - failed} image(s) classified` + (failed ? `, ${failed} could not be` : "");
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => { classify(event.target.files); event.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (event) => classify(event.dataTransfer.files));
  loadCard();
}

setUp();
