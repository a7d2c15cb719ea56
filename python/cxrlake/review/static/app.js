// cxrlake review: worklist and case view in one page. User-supplied text is only ever inserted
// with textContent (never innerHTML), so a comment holding HTML or script shows as text.
"use strict";

const state = {
  session: null,
  items: [],
  selected: 0,
  caseId: null,
  caseData: null,
  zoom: null, // null = fit
  tx: 0,
  ty: 0,
  window: 1.0,
  level: 0.5,
  heatmap: false,
  saving: false,
};

const $ = (id) => document.getElementById(id);
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmt(x, digits) {
  return x === null || x === undefined ? "-" : Number(x).toFixed(digits === undefined ? 3 : digits);
}

function status(message, kind) {
  const box = $("status");
  box.textContent = message || "";
  box.className = kind || "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function randomHex32() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------ worklist
function filterQuery() {
  const params = new URLSearchParams();
  for (const [id, key] of [["f-split", "split"], ["f-label", "label"], ["f-model", "model_version"], ["f-reviewed", "reviewed"]]) {
    const value = $(id).value;
    if (value) params.set(key, value);
  }
  return params.toString();
}

function fillOptions(select, values) {
  const keep = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const v of values) {
    const opt = el("option", v);
    opt.value = v;
    select.appendChild(opt);
  }
  if (values.includes(keep)) select.value = keep;
}

async function loadWorklist() {
  const data = await api("/api/worklist?" + filterQuery());
  state.items = data.items;
  fillOptions($("f-split"), data.options.split);
  fillOptions($("f-label"), data.options.label);
  fillOptions($("f-model"), data.options.model_version);
  const p = data.progress;
  $("progress-text").textContent = `${p.reviewed} of ${p.total} reviewed (${p.reviewed_by_me} by you)`;
  $("progress-fill").style.width = p.total ? `${(100 * p.reviewed) / p.total}%` : "0%";
  if (state.selected >= state.items.length) state.selected = Math.max(0, state.items.length - 1);
  renderWorklist();
  return data;
}

function renderWorklist() {
  const body = $("worklist-body");
  body.replaceChildren();
  state.items.forEach((item, i) => {
    const tr = document.createElement("tr");
    tr.dataset.predictionId = item.prediction_id;
    tr.dataset.index = String(i);
    if (i === state.selected) tr.classList.add("selected");
    if (item.my_verdict) tr.classList.add("reviewed");
    const cells = [
      i + 1,
      fmt(item.need, 2),
      item.reasons.join(", "),
      item.dataset_split,
      item.folder_label,
      // a radiologist's label given before the file's bytes changed no longer stands for them
      (item.current_label || "-") + (item.current_label_on_earlier_bytes ? " (earlier bytes)" : ""),
      item.predicted_label,
      fmt(item.probability),
      fmt(item.threshold),
      item.model_version,
      fmt(item.quality_score, 2),
      item.verdicts,
      item.my_verdict || "",
    ];
    cells.forEach((value, c) => {
      const td = el("td", value);
      if (c === 12) td.className = "my-verdict";
      if (c === 2) td.className = "why";
      if (c === 6) td.className = item.predicted_label === "PNEUMONIA" ? "pos" : "neg";
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => openCase(item.prediction_id));
    body.appendChild(tr);
  });
  $("worklist-empty").hidden = state.items.length > 0;
}

function moveSelection(delta) {
  if (!state.items.length) return;
  state.selected = Math.min(state.items.length - 1, Math.max(0, state.selected + delta));
  renderWorklist();
  const row = $("worklist-body").children[state.selected];
  if (row) row.scrollIntoView({ block: "nearest" });
}

function showWorklist() {
  $("case-view").hidden = true;
  $("worklist-view").hidden = false;
  state.caseId = null;
  if (location.hash !== "#/") history.pushState(null, "", "#/");
  loadWorklist().catch((e) => status(e.message, "error"));
}

// ------------------------------------------------------------------ case view
function openCase(predictionId) {
  const index = state.items.findIndex((i) => i.prediction_id === predictionId);
  if (index >= 0) state.selected = index;
  const target = "#/case/" + encodeURIComponent(predictionId);
  if (location.hash !== target) history.pushState(null, "", target);
  return loadCase(predictionId);
}

async function loadCase(predictionId) {
  delete document.body.dataset.case; // set again once this case is shown with its image
  const data = await api("/api/case/" + encodeURIComponent(predictionId));
  state.caseId = predictionId;
  state.caseData = data;
  $("worklist-view").hidden = true;
  $("case-view").hidden = false;
  const index = state.items.findIndex((i) => i.prediction_id === predictionId);
  $("case-position").textContent = index >= 0 ? `case ${index + 1} of ${state.items.length}` : "";
  $("c-predicted").textContent = data.predicted_label;
  $("c-predicted").className = data.predicted_label === "PNEUMONIA" ? "pos" : "neg";
  $("c-probability").textContent = fmt(data.probability);
  $("c-threshold").textContent =
    fmt(data.threshold) + (data.threshold_source ? ` (${data.threshold_source})` : "");
  $("c-model").textContent = `${data.model_name} ${data.model_version}`;
  $("c-quality").textContent = fmt(data.quality_score, 2);
  $("c-split").textContent = data.dataset_split;
  $("c-folder").textContent = data.folder_label;
  $("c-current").textContent =
    (data.current_label || "-") +
    (data.current_label_on_earlier_bytes ? " (given on earlier bytes of this file)" : "");
  $("c-image-id").textContent = data.image_id;
  resetForm(data.my_verdict);
  renderVerdicts(data.verdicts);
  renderHistory(data.label_history);
  const hasMap = !!(data.heatmap && data.heatmap.values && data.heatmap.values.length);
  $("heatmap-toggle-label").hidden = !hasMap;
  $("heatmap-none").hidden = hasMap;
  $("heatmap-toggle").checked = hasMap && state.heatmap;
  const img = $("image");
  img.onload = () => {
    fitImage();
    drawHeatmap();
    document.body.dataset.case = predictionId;
  };
  const url = new URL("/api/image/" + encodeURIComponent(data.image_id), location.href).href;
  if (img.src === url && img.complete && img.naturalWidth) img.onload(); // same image: no load event
  else img.src = url;
  status("");
}

function resetForm(mine) {
  const form = $("verdict-form");
  form.reset();
  $("correct-label-set").disabled = true;
  if (mine) {
    setVerdict(mine.feedback_type, mine.correct_label);
    setRadio("confidence_level", mine.confidence_level || "medium");
    $("comment").value = mine.comments || "";
  }
}

function setRadio(name, value) {
  const input = document.querySelector(`#verdict-form input[name="${name}"][value="${value}"]`);
  if (input) input.checked = true;
}

function setVerdict(type, label) {
  setRadio("feedback_type", type);
  const predicted = state.caseData ? state.caseData.predicted_label : null;
  const set = $("correct-label-set");
  document.querySelectorAll('#verdict-form input[name="correct_label"]').forEach((i) => (i.checked = false));
  if (type === "disagree") {
    set.disabled = false;
    const other = label || (predicted === "PNEUMONIA" ? "NORMAL" : "PNEUMONIA");
    setRadio("correct_label", other);
  } else {
    set.disabled = true;
    if (type === "agree" && predicted) setRadio("correct_label", predicted);
  }
}

function renderVerdicts(verdicts) {
  const list = $("verdict-list");
  list.replaceChildren();
  if (!verdicts.length) list.appendChild(el("li", "none yet", "muted"));
  for (const v of verdicts) {
    const li = el("li");
    const label = v.correct_label ? ` (${v.correct_label})` : "";
    li.appendChild(el("span", `${v.feedback_timestamp.slice(0, 19).replace("T", " ")} ${v.radiologist_id}: ${v.feedback_type}${label}, ${v.confidence_level}`));
    if (v.comments) li.appendChild(el("q", v.comments, "comment-text"));
    list.appendChild(li);
  }
}

function renderHistory(rows) {
  const list = $("label-history");
  list.replaceChildren();
  if (!rows.length) list.appendChild(el("li", "no label", "muted"));
  for (const h of rows) {
    const until = h.valid_to ? h.valid_to.slice(0, 19).replace("T", " ") : "now";
    list.appendChild(
      el("li", `${h.label_name} from ${h.source}, ${h.valid_from.slice(0, 19).replace("T", " ")} to ${until}${h.is_current ? " (current)" : ""}`)
    );
  }
}

function currentIndex() {
  return state.items.findIndex((i) => i.prediction_id === state.caseId);
}

function goRelative(delta) {
  const index = currentIndex();
  const next = state.items[index + delta];
  if (index < 0 || !next) {
    status(delta > 0 ? "End of the worklist." : "Start of the worklist.", "info");
    return Promise.resolve();
  }
  return openCase(next.prediction_id).catch((e) => status(e.message, "error"));
}

async function saveVerdict() {
  if (state.saving || !state.caseData) return;
  const form = $("verdict-form");
  const type = form.querySelector('input[name="feedback_type"]:checked');
  if (!type) {
    status("Choose agree [a], disagree [d] or uncertain [u] first.", "error");
    return;
  }
  const label = form.querySelector('input[name="correct_label"]:checked');
  const confidence = form.querySelector('input[name="confidence_level"]:checked');
  const payload = {
    feedback_id: randomHex32(),
    prediction_id: state.caseId,
    feedback_type: type.value,
    correct_label: type.value === "disagree" && label ? label.value : null,
    confidence_level: confidence ? confidence.value : "medium",
    comments: $("comment").value || null,
  };
  state.saving = true;
  try {
    await api("/api/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(payload),
    });
    const item = state.items[currentIndex()];
    if (item) {
      item.my_verdict = payload.feedback_type;
      item.verdicts = Math.max(1, item.verdicts);
    }
    status(`Saved: ${payload.feedback_type}.`, "ok");
    await goRelative(1);
    loadWorklist().catch(() => {});
  } catch (e) {
    status("Not saved: " + e.message, "error");
  } finally {
    state.saving = false;
  }
}

// ------------------------------------------------------------------ viewer
function applyTransform() {
  const scale = state.zoom;
  $("stage").style.transform = `translate(${state.tx}px, ${state.ty}px) scale(${scale})`;
  $("zoom").value = String(Math.round(scale * 100));
  $("zoom-text").textContent = `${Math.round(scale * 100)}%`;
}

function fitImage() {
  const img = $("image");
  const vp = $("viewport");
  if (!img.naturalWidth) return;
  const scale = Math.min(vp.clientWidth / img.naturalWidth, vp.clientHeight / img.naturalHeight);
  state.zoom = scale;
  state.tx = (vp.clientWidth - img.naturalWidth * scale) / 2;
  state.ty = (vp.clientHeight - img.naturalHeight * scale) / 2;
  applyTransform();
}

function zoomTo(scale, cx, cy) {
  const vp = $("viewport");
  const old = state.zoom || 1;
  scale = Math.min(4, Math.max(0.05, scale));
  const px = cx === undefined ? vp.clientWidth / 2 : cx;
  const py = cy === undefined ? vp.clientHeight / 2 : cy;
  state.tx = px - ((px - state.tx) * scale) / old;
  state.ty = py - ((py - state.ty) * scale) / old;
  state.zoom = scale;
  applyTransform();
}

function applyWindowLevel() {
  const slope = 1 / state.window;
  const intercept = 0.5 - state.level / state.window;
  for (const id of ["wl-r", "wl-g", "wl-b"]) {
    $(id).setAttribute("slope", slope.toFixed(4));
    $(id).setAttribute("intercept", intercept.toFixed(4));
  }
  $("image").style.filter = "url(#wl-filter)";
  $("wl-window").value = String(Math.round(state.window * 100));
  $("wl-level").value = String(Math.round(state.level * 100));
}

function setWindow(w) {
  state.window = Math.min(2, Math.max(0.05, w));
  applyWindowLevel();
}

function setLevel(l) {
  state.level = Math.min(1, Math.max(0, l));
  applyWindowLevel();
}

// The overlay rule of cxrlake.heatmap.display_alpha: fully transparent where the map is below
// HEAT_FLOOR of its largest positive value (the film keeps its grey levels and window/level
// there), then red whose opacity rises to HEAT_TOP_ALPHA at the hottest point. The server sends
// the map upsampled and smoothed (heatmap_display, cxrlake.heatmap.refine).
const HEAT_FLOOR = 0.4;
const HEAT_TOP_ALPHA = 0.55;

function drawHeatmap() {
  const canvas = $("heatmap");
  const img = $("image");
  const data = state.caseData || {};
  const map = data.heatmap_display || data.heatmap;
  const on = $("heatmap-toggle").checked && map && map.values && map.values.length;
  canvas.hidden = !on;
  if (!on || !img.naturalWidth) return;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const small = document.createElement("canvas");
  small.width = map.cols;
  small.height = map.rows;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(map.cols, map.rows);
  let peak = 0;
  for (const v of map.values) peak = Math.max(peak, v);
  map.values.forEach((v, i) => {
    const t = peak > 0 ? Math.min(1, Math.max(0, (v / peak - HEAT_FLOOR) / (1 - HEAT_FLOOR))) : 0;
    pixels.data[4 * i] = 235;
    pixels.data[4 * i + 1] = 40;
    pixels.data[4 * i + 2] = 25;
    pixels.data[4 * i + 3] = Math.round(255 * HEAT_TOP_ALPHA * t);
  });
  ctx.putImageData(pixels, 0, 0);
  const big = canvas.getContext("2d");
  big.clearRect(0, 0, canvas.width, canvas.height);
  big.imageSmoothingEnabled = true;
  big.imageSmoothingQuality = "high";
  big.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function toggleHeatmap() {
  if ($("heatmap-toggle-label").hidden) return;
  const box = $("heatmap-toggle");
  box.checked = !box.checked;
  state.heatmap = box.checked;
  drawHeatmap();
}

function setupViewer() {
  const vp = $("viewport");
  let drag = null;
  vp.addEventListener("mousedown", (e) => {
    drag = { x: e.clientX, y: e.clientY, tx: state.tx, ty: state.ty, w: state.window, l: state.level, wl: e.shiftKey };
    e.preventDefault();
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (drag.wl) {
      setWindow(drag.w + dx / 300);
      setLevel(drag.l - dy / 300);
    } else {
      state.tx = drag.tx + dx;
      state.ty = drag.ty + dy;
      applyTransform();
    }
  });
  window.addEventListener("mouseup", () => (drag = null));
  vp.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const rect = vp.getBoundingClientRect();
      zoomTo(state.zoom * (e.deltaY < 0 ? 1.15 : 1 / 1.15), e.clientX - rect.left, e.clientY - rect.top);
    },
    { passive: false }
  );
  $("wl-window").addEventListener("input", (e) => setWindow(Number(e.target.value) / 100));
  $("wl-level").addEventListener("input", (e) => setLevel(Number(e.target.value) / 100));
  $("zoom").addEventListener("input", (e) => zoomTo(Number(e.target.value) / 100));
  $("btn-fit").addEventListener("click", fitImage);
  $("btn-full").addEventListener("click", () => zoomTo(1));
  $("btn-reset").addEventListener("click", () => {
    setWindow(1);
    setLevel(0.5);
  });
  $("heatmap-toggle").addEventListener("change", (e) => {
    state.heatmap = e.target.checked;
    drawHeatmap();
  });
  window.addEventListener("resize", () => {
    if (!$("case-view").hidden) fitImage();
  });
  applyWindowLevel();
}

// ------------------------------------------------------------------ keyboard
function onKey(e) {
  const target = e.target;
  const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
  const inCase = !$("case-view").hidden;
  if (e.key === "Escape") {
    if (typing) target.blur();
    else if (inCase) showWorklist();
    return;
  }
  if (typing) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && inCase) {
      e.preventDefault();
      saveVerdict();
    }
    return;
  }
  if (target && target.tagName === "SELECT") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (!inCase) {
    if (e.key === "j" || e.key === "ArrowDown") moveSelection(1);
    else if (e.key === "k" || e.key === "ArrowUp") moveSelection(-1);
    else if (e.key === "Enter" && state.items[state.selected]) openCase(state.items[state.selected].prediction_id).catch((err) => status(err.message, "error"));
    else return;
    e.preventDefault();
    return;
  }
  const predicted = state.caseData ? state.caseData.predicted_label : null;
  switch (e.key) {
    case "a": setVerdict("agree"); break;
    case "d": setVerdict("disagree"); break;
    case "u": setVerdict("uncertain"); break;
    case "n":
    case "p": {
      const label = e.key === "n" ? "NORMAL" : "PNEUMONIA";
      setVerdict(label === predicted ? "agree" : "disagree", label === predicted ? undefined : label);
      break;
    }
    case "1": setRadio("confidence_level", "low"); break;
    case "2": setRadio("confidence_level", "medium"); break;
    case "3": setRadio("confidence_level", "high"); break;
    case "c": $("comment").focus(); break;
    case "Enter": saveVerdict(); break;
    case "j": case "ArrowRight": goRelative(1); break;
    case "k": case "ArrowLeft": goRelative(-1); break;
    case "h": toggleHeatmap(); break;
    case "+": case "=": zoomTo(state.zoom * 1.25); break;
    case "-": zoomTo(state.zoom / 1.25); break;
    case "0": fitImage(); break;
    case "f": zoomTo(1); break;
    case "[": setWindow(state.window / 1.15); break;
    case "]": setWindow(state.window * 1.15); break;
    case ",": setLevel(state.level - 0.03); break;
    case ".": setLevel(state.level + 0.03); break;
    case "r": setWindow(1); setLevel(0.5); break;
    default: return;
  }
  e.preventDefault();
}

// ------------------------------------------------------------------ start
async function route() {
  const m = location.hash.match(/^#\/case\/(.+)$/);
  if (m) {
    if (!state.items.length) await loadWorklist();
    await loadCase(decodeURIComponent(m[1]));
  } else {
    $("case-view").hidden = true;
    $("worklist-view").hidden = false;
    await loadWorklist();
  }
}

async function start() {
  setupViewer();
  document.addEventListener("keydown", onKey);
  $("verdict-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveVerdict();
  });
  $("verdict-form").addEventListener("change", (e) => {
    if (e.target.name === "feedback_type") setVerdict(e.target.value);
  });
  $("filters").addEventListener("change", () => {
    state.selected = 0;
    loadWorklist().catch((err) => status(err.message, "error"));
  });
  $("btn-back").addEventListener("click", showWorklist);
  $("btn-prev").addEventListener("click", () => goRelative(-1));
  $("btn-next").addEventListener("click", () => goRelative(1));
  window.addEventListener("popstate", () => route().catch((e) => status(e.message, "error")));
  try {
    state.session = await api("/api/session");
    $("reviewer").textContent = state.session.reviewer;
    await route();
    document.body.dataset.ready = "true";
  } catch (e) {
    status(e.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", start);
