// The page: tag an uploaded file (REST) or the microphone (WS /v1/stream). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], audioUrl: null, duration: 0, ws: null, mic: null, live: [] };
const TOP_K = 10;
const COLORS = ["#0b57d0", "#d93025", "#188038", "#e37400", "#9334e6", "#007b83"];

function status(text) { $("status").textContent = text; }
function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}
function apiKey() { return $("apikey").value.trim(); }
function headers() { return apiKey() ? { Authorization: "Bearer " + apiKey() } : {}; }
function currentModel() { return state.models.find((m) => m.name === $("model").value); }
function isSed(model) {
  return !!model && model.frames_per_second &&
    (model.outputs || []).some((o) => o.kind === "framewise");
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

async function loadModels() {
  try {
    const body = await api("/v1/models");
    state.models = body.models;
    const select = $("model");
    select.replaceChildren(...body.models.map((m) => {
      const option = new Option(`${m.name} (${m.arch})`, m.name);
      option.selected = m.default;
      return option;
    }));
    showError("");
    status(`${body.models.length} model(s) ready`);
  } catch (err) {
    showError("Cannot list the models: " + err.message);
  }
}

// ---- upload ----
async function tagFile(file) {
  showError("");
  const model = currentModel();
  if (!model) { showError("No model: set the API key, then reload the models."); return; }
  status(`Tagging ${file.name}…`);
  const clip = model.clip_samples / model.sample_rate;
  const data = await file.arrayBuffer();
  const wave = await decodeWave(data.slice(0));
  const long = wave && wave.duration > clip * 1.5;
  const params = new URLSearchParams({ model: model.name, top_k: TOP_K, scores: "false" });
  if (long) { params.set("window_s", clip); params.set("hop_s", clip); }
  const form = new FormData();
  form.append("file", new Blob([data]), file.name);
  try {
    const body = await api("/v1/tag?" + params, { method: "POST", body: form });
    const result = body.results[0];
    if (result.error) throw new Error(result.error.message);
    showPlayer(file, wave);
    showTop(result.top);
    showWindows(long ? result.windows : null);
    $("result").hidden = false;
    if (isSed(model)) await detect(model, data, file.name);
    else { $("tracks").hidden = true; $("eventtable").hidden = true; }
    status(`${file.name}: ${result.top.length} labels (model ${body.model.name})`);
    document.body.dataset.tagged = "true";
  } catch (err) {
    showError("Tagging failed: " + err.message);
    status("");
  }
}

async function decodeWave(buffer) {
  try {
    const ctx = new OfflineAudioContext(1, 1, 44100);
    return await ctx.decodeAudioData(buffer);
  } catch (_) {
    return null; // the service may still decode what the browser cannot
  }
}

function showPlayer(file, wave) {
  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = URL.createObjectURL(file);
  $("audio").src = state.audioUrl;
  $("player").hidden = false;
  state.wave = wave;
  state.duration = wave ? wave.duration : 0;
  drawWave(0);
}

function drawWave(cursor) {
  const canvas = $("wave"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const wave = state.wave;
  if (wave) {
    const samples = wave.getChannelData(0), step = Math.max(1, Math.floor(samples.length / canvas.width));
    g.fillStyle = "#5f6368";
    for (let x = 0; x < canvas.width; x++) {
      let lo = 0, hi = 0;
      for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
        lo = Math.min(lo, samples[i]); hi = Math.max(hi, samples[i]);
      }
      const mid = canvas.height / 2;
      g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
    }
  }
  if (state.duration > 0) {
    g.fillStyle = "#d93025";
    g.fillRect((cursor / state.duration) * canvas.width, 0, 2, canvas.height);
  }
}

function animateCursor() {
  const audio = $("audio");
  if (!audio.paused) drawWave(audio.currentTime);
  requestAnimationFrame(animateCursor);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function showTop(top) {
  const svg = $("bars"), ns = "http://www.w3.org/2000/svg", rowH = 24, labelW = 260, barW = 330;
  svg.replaceChildren(svg.querySelector("title"));
  svg.setAttribute("height", top.length * rowH + 4);
  top.forEach((t, i) => {
    const y = i * rowH + 2;
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 0); text.setAttribute("y", y + 16);
    text.setAttribute("class", "bar-label");
    text.textContent = t.label;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", labelW); rect.setAttribute("y", y + 3);
    rect.setAttribute("height", rowH - 6);
    rect.setAttribute("width", Math.max(1, t.score * barW));
    rect.setAttribute("fill", COLORS[0]);
    const value = document.createElementNS(ns, "text");
    value.setAttribute("x", labelW + t.score * barW + 6); value.setAttribute("y", y + 16);
    value.textContent = t.score.toFixed(3);
    svg.append(text, rect, value);
  });
  $("toptable").tBodies[0].replaceChildren(...top.map((t) => row([t.label, t.score.toFixed(3)])));
}

function showWindows(windows) {
  const heat = $("heat"), table = $("windowtable");
  heat.hidden = table.hidden = !windows;
  if (!windows) return;
  const labels = [];
  for (const w of windows) for (const t of w.top.slice(0, 3)) if (!labels.includes(t.label)) labels.push(t.label);
  const shown = labels.slice(0, 8), g = heat.getContext("2d");
  const left = 200, cellW = (heat.width - left) / windows.length, cellH = heat.height / shown.length;
  g.clearRect(0, 0, heat.width, heat.height);
  g.font = "12px system-ui"; g.textBaseline = "middle";
  shown.forEach((label, r) => {
    g.fillStyle = "#1b1b1b";
    g.fillText(label.slice(0, 28), 4, (r + 0.5) * cellH);
    windows.forEach((w, c) => {
      const hit = w.top.find((t) => t.label === label);
      const score = hit ? hit.score : 0;
      g.fillStyle = `rgba(11, 87, 208, ${score})`;
      g.fillRect(left + c * cellW, r * cellH, Math.ceil(cellW), Math.ceil(cellH));
    });
  });
  table.tBodies[0].replaceChildren(...windows.map((w) => row([
    w.start_s.toFixed(1), w.end_s.toFixed(1),
    w.top.slice(0, 3).map((t) => `${t.label} ${t.score.toFixed(2)}`).join(", ")])));
}

async function detect(model, data, name) {
  const form = new FormData();
  form.append("file", new Blob([data]), name);
  const params = new URLSearchParams({ model: model.name, top_k: 5 });
  const body = await api("/v1/detect?" + params, { method: "POST", body: form });
  const result = body.results[0];
  if (result.error) throw new Error(result.error.message);
  drawTracks(result);
  const table = $("eventtable");
  table.hidden = false;
  table.tBodies[0].replaceChildren(...result.events.map((e) => row([
    e.label, e.start_s.toFixed(2), e.end_s.toFixed(2), e.peak.toFixed(3)])));
}

function drawTracks(result) {
  const canvas = $("tracks"), g = canvas.getContext("2d");
  canvas.hidden = false;
  g.clearRect(0, 0, canvas.width, canvas.height);
  const duration = result.duration_s, plotH = canvas.height - 40;
  const x = (s) => (s / duration) * canvas.width;
  g.font = "12px system-ui";
  result.tracks.forEach((track, i) => {
    g.strokeStyle = g.fillStyle = COLORS[i % COLORS.length];
    g.beginPath();
    track.scores.forEach((score, f) => {
      const px = x(f / result.frames_per_second), py = plotH - score * plotH;
      if (f === 0) g.moveTo(px, py); else g.lineTo(px, py);
    });
    g.stroke();
    g.fillText(track.label, 4, 12 + i * 14);
  });
  result.events.forEach((e) => {
    const i = result.tracks.findIndex((t) => t.index === e.index);
    g.fillStyle = COLORS[(i < 0 ? 5 : i) % COLORS.length];
    g.fillRect(x(e.start_s), plotH + 6 + (Math.max(i, 0) % 5) * 6, Math.max(2, x(e.end_s) - x(e.start_s)), 5);
  });
}

// ---- live microphone ----
async function startMic() {
  showError("");
  const model = currentModel();
  if (!model) { showError("No model loaded."); return; }
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } });
  } catch (err) {
    showError("No microphone: " + err.message);
    return;
  }
  const ctx = new AudioContext();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/stream`);
  const clip = model.clip_samples / model.sample_rate;
  ws.onopen = () => ws.send(JSON.stringify({
    model: model.name, sample_rate: ctx.sampleRate, channels: 1, sample_format: "float32",
    window_s: Math.min(clip, 2), hop_s: 0.5, top_k: 5, api_key: apiKey() || undefined,
  }));
  ws.onmessage = (event) => onLive(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (event.code !== 1000 && event.code !== 1005) showError(`Live stream closed (${event.code}): ${event.reason}`);
    stopMic(false);
  };
  const source = ctx.createMediaStreamSource(media);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  node.onaudioprocess = (e) => {
    if (ws.readyState === WebSocket.OPEN && state.ready) ws.send(new Float32Array(e.inputBuffer.getChannelData(0)).buffer);
  };
  source.connect(node);
  node.connect(ctx.destination);
  state.mic = { ctx, media, node, source };
  state.ws = ws;
  state.ready = false;
  state.live = [];
  $("mic").textContent = "Stop microphone";
  $("mic").setAttribute("aria-pressed", "true");
  status("Listening…");
}

function stopMic(sendEnd = true) {
  if (state.ws && sendEnd && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "end" }));
  if (state.mic) {
    state.mic.node.disconnect(); state.mic.source.disconnect();
    state.mic.media.getTracks().forEach((t) => t.stop());
    state.mic.ctx.close();
  }
  state.mic = null; state.ready = false;
  $("mic").textContent = "Start microphone";
  $("mic").setAttribute("aria-pressed", "false");
  status("Microphone stopped");
}

function onLive(message) {
  if (message.type === "ready") { state.ready = true; return; }
  if (message.type !== "result") return;
  state.live.push(message);
  if (state.live.length > 120) state.live.shift();
  $("live").replaceChildren(...message.top.map((t) => {
    const li = document.createElement("li");
    li.textContent = `${t.label} ${t.score.toFixed(2)}`;
    return li;
  }));
  const body = $("livetable").tBodies[0];
  body.prepend(row([message.start_s.toFixed(1),
    message.top.slice(0, 3).map((t) => `${t.label} ${t.score.toFixed(2)}`).join(", "), String(message.skipped)]));
  while (body.rows.length > 60) body.deleteRow(-1);
  document.body.dataset.liveResults = String(state.live.length);
  drawTimeline();
}

function drawTimeline() {
  const canvas = $("timeline"), g = canvas.getContext("2d"), colW = 8;
  g.clearRect(0, 0, canvas.width, canvas.height);
  const shown = state.live.slice(-Math.floor(canvas.width / colW));
  const labels = [];
  for (const m of shown) for (const t of m.top.slice(0, 1)) if (!labels.includes(t.label)) labels.push(t.label);
  const keep = labels.slice(-6);
  shown.forEach((m, c) => {
    m.top.forEach((t) => {
      const r = keep.indexOf(t.label);
      if (r < 0) return;
      g.fillStyle = COLORS[r % COLORS.length];
      g.globalAlpha = Math.max(0.1, t.score);
      g.fillRect(canvas.width - (shown.length - c) * colW, r * 20, colW - 1, 18);
    });
  });
  g.globalAlpha = 1; g.fillStyle = "#1b1b1b"; g.font = "12px system-ui";
  keep.forEach((label, r) => g.fillText(label.slice(0, 30), 4, r * 20 + 13));
}

// ---- wiring ----
function init() {
  $("apikey").value = sessionStorage.getItem("panns-api-key") || "";
  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem("panns-api-key", apiKey());
    loadModels();
  });
  const drop = $("drop"), input = $("file");
  input.addEventListener("change", () => input.files[0] && tagFile(input.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) tagFile(e.dataTransfer.files[0]);
  });
  $("mic").addEventListener("click", () => (state.mic ? stopMic() : startMic()));
  requestAnimationFrame(animateCursor);
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
