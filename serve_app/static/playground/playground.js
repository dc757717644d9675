// The playground: every action is a call to the public API (REST and the speech WebSocket).
"use strict";

const API = "/api/v1";
const WS_PATH = `${API}/ws/synthesize`;
const $ = (id) => document.getElementById(id);
// What the page did, for people poking at it in the console (and for the browser test).
const playground = (window.playground = { playback: null, live: null, voices: [] });

// --- plumbing ---------------------------------------------------------------------------------

function apiKey() {
  return localStorage.getItem("cosyvoice.apiKey") || "";
}

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not the error shape */ }
    throw new Error(`${response.status} ${body.error || response.statusText}: ${body.message || ""}`);
  }
  return response;
}

function say(message, kind = "") {
  const footer = $("status");
  footer.textContent = message;
  footer.className = kind;
}

function guarded(action) {
  return async (event) => {
    if (event) event.preventDefault();
    try { await action(event); } catch (error) { say(error.message, "error"); }
  };
}

let audioContext = null;
function audio() {
  audioContext = audioContext || new AudioContext();
  if (audioContext.state === "suspended") audioContext.resume();
  return audioContext;
}

// Plays PCM as it arrives, each piece right after the one before.
class PcmPlayer {
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.next = 0;
    this.samples = 0;
    this.sources = [];
    this.carry = new Uint8Array(0);
  }

  pushBytes(bytes) {
    const joined = new Uint8Array(this.carry.length + bytes.length);
    joined.set(this.carry);
    joined.set(bytes, this.carry.length);
    const even = joined.length - (joined.length % 2);
    this.carry = joined.slice(even);
    const view = new DataView(joined.buffer, 0, even);
    const pcm = new Float32Array(even / 2);
    for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
    this.push(pcm);
  }

  push(pcm) {
    if (!pcm.length) return;
    const context = audio();
    const buffer = context.createBuffer(1, pcm.length, this.sampleRate);
    buffer.copyToChannel(pcm, 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    this.next = Math.max(this.next, context.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
    this.samples += pcm.length;
    this.sources.push(source);
    this.last = source;
  }

  stop() {
    for (const source of this.sources) { try { source.stop(); } catch (_) { /* not started */ } }
    this.sources = [];
  }

  get duration() { return this.samples / this.sampleRate; }
}

// --- service and voices -----------------------------------------------------------------------

async function loadService() {
  const health = await (await api("/health")).json();
  $("service").textContent = `${health.model || "model"} · ${health.status}`;
}

async function loadVoices(select) {
  const [pretrained, registered] = await Promise.all([
    api(`${API}/voices/pretrained/list`).then((r) => r.json()),
    api(`${API}/voices/?page_size=100`).then((r) => r.json()),
  ]);
  const voices = $("voice");
  voices.replaceChildren();
  const group = (label, ids) => {
    if (!ids.length) return;
    const element = document.createElement("optgroup");
    element.label = label;
    for (const id of ids) element.append(new Option(id, id));
    voices.append(element);
  };
  group("pretrained", pretrained.pretrained_voices);
  group("registered", registered.voices.map((voice) => voice.voice_id));
  playground.voices = [...pretrained.pretrained_voices, ...registered.voices.map((voice) => voice.voice_id)];
  if (select) voices.value = select;
}

let recorded = null;
let recorder = null;

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const parts = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => parts.push(event.data);
  recorder.onstop = () => {
    recorded = new Blob(parts, { type: recorder.mimeType });
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    $("record").textContent = "Record from microphone";
    $("record-state").textContent = `recorded ${(recorded.size / 1024).toFixed(0)} KB`;
  };
  recorder.start();
  recorded = null;
  $("record").textContent = "Stop recording";
  $("record-state").textContent = "recording…";
}

async function registerVoice() {
  const form = new FormData($("register-form"));
  const file = $("voice-file").files[0];
  form.delete("audio_file");
  if (file) form.append("audio_file", file);
  else if (recorded) form.append("audio_file", recorded, "recording.webm");
  else throw new Error("Choose a sample file or record one first");
  for (const [name, value] of [...form.entries()]) if (value === "") form.delete(name);
  const voice = await (await api(`${API}/voices/`, { method: "POST", body: form })).json();
  await loadVoices(voice.voice_id);
  say(`Registered voice ${voice.voice_id} (${voice.duration.toFixed(2)} s sample)`, "ok");
}

// --- synthesis --------------------------------------------------------------------------------

function synthesisBody(stream) {
  const mode = $("mode").value;
  const fields = { text: $("text").value, voice_id: $("voice").value, format: stream ? "wav" : $("format").value,
                   stream };
  if ($("seed").value !== "") fields.seed = Number($("seed").value);
  if (mode === "instruct") fields.instruct_text = $("instruct").value;
  if (mode === "sft" || mode === "instruct") {
    return { mode, init: { method: "POST", headers: { "Content-Type": "application/json" },
                           body: JSON.stringify(fields) } };
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  return { mode, init: { method: "POST", body: form } };
}

function showAudio(blob, name, figures) {
  const url = URL.createObjectURL(blob);
  const result = $("result");
  result.replaceChildren();
  const player = document.createElement("audio");
  player.controls = true;
  player.src = url;
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.textContent = `Download ${name}`;
  const text = document.createElement("div");
  text.className = "figures";
  text.textContent = figures;
  result.append(player, link, text);
}

async function synthesize() {
  const { mode, init } = synthesisBody(false);
  say("Synthesizing…");
  const started = performance.now();
  const body = await (await api(`${API}/synthesize/${mode}`, init)).json();
  const blob = await (await api(body.audio_url)).blob();
  const decoded = await audio().decodeAudioData(await blob.arrayBuffer());
  playground.playback = { apiDuration: body.duration, decodedDuration: decoded.duration, ended: false };
  const source = audio().createBufferSource();
  source.buffer = decoded;
  source.connect(audio().destination);
  source.onended = () => { playground.playback.ended = true; };
  source.start();
  const name = body.audio_url.split("/").pop();
  showAudio(blob, name, `${body.duration.toFixed(2)} s of ${body.format} at ${body.sample_rate} Hz, made in ` +
    `${body.synthesis_time.toFixed(2)} s (${((performance.now() - started) / 1000).toFixed(2)} s here)`);
  say("Playing", "ok");
}

async function streamSynthesis() {
  const { mode, init } = synthesisBody(true);
  say("Streaming…");
  const started = performance.now();
  const response = await api(`${API}/synthesize/${mode}`, init);
  const reader = response.body.getReader();
  let header = new Uint8Array(0);
  let player = null;
  let firstAudio = null;
  const parts = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    let bytes = value;
    if (!player) {
      const joined = new Uint8Array(header.length + bytes.length);
      joined.set(header);
      joined.set(bytes, header.length);
      if (joined.length < 44) { header = joined; continue; }
      player = new PcmPlayer(new DataView(joined.buffer).getUint32(24, true));
      bytes = joined.slice(44);
    }
    if (bytes.length && firstAudio === null) firstAudio = performance.now() - started;
    player.pushBytes(bytes);
  }
  playground.playback = { streamed: true, decodedDuration: player ? player.duration : 0, firstAudioMs: firstAudio };
  showAudio(new Blob(parts, { type: "audio/wav" }), "stream.wav",
    `${playground.playback.decodedDuration.toFixed(2)} s streamed; first audio after ${firstAudio.toFixed(0)} ms`);
  say("Streamed", "ok");
}

// --- async tasks ------------------------------------------------------------------------------

async function submitTask() {
  const { mode, init } = synthesisBody(false);
  const task = await (await api(`${API}/async/synthesize/${mode}`, init)).json();
  say(`Task ${task.task_id} submitted`, "ok");
  await refreshTasks();
}

let taskTimer = null;
async function refreshTasks() {
  const { tasks } = await (await api(`${API}/async/tasks?limit=20`)).json();
  const rows = tasks.map((task) => {
    const row = document.createElement("tr");
    const progress = document.createElement("progress");
    progress.max = 1;
    progress.value = task.progress;
    const cells = [task.task_id, task.mode, task.error ? `${task.status}: ${task.error}` : task.status, progress,
                   new Date(task.created_at).toLocaleTimeString()];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.append(value);
      row.append(cell);
    }
    const action = document.createElement("td");
    if (task.status === "completed") {
      const button = document.createElement("button");
      button.className = "secondary";
      button.textContent = "Download";
      button.onclick = guarded(() => downloadTask(task.task_id));
      action.append(button);
    }
    row.append(action);
    return row;
  });
  document.querySelector("#tasks tbody").replaceChildren(...rows);
  clearTimeout(taskTimer);
  if (tasks.some((task) => task.status === "pending" || task.status === "processing")) {
    taskTimer = setTimeout(guarded(refreshTasks), 1000);
  }
}

async function downloadTask(taskId) {
  const result = await (await api(`${API}/async/tasks/${taskId}/result`)).json();
  const blob = await (await api(result.audio_url)).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = result.audio_url.split("/").pop();
  link.click();
  showAudio(blob, link.download, `task ${taskId}: ${result.duration.toFixed(2)} s of ${result.format}`);
}

// --- live: the speech WebSocket ---------------------------------------------------------------

class LiveSession {
  constructor() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // A browser cannot set headers on a WebSocket: the key travels as the `api_key` query parameter.
    const query = apiKey() ? `?api_key=${encodeURIComponent(apiKey())}` : "";
    this.socket = new WebSocket(`${scheme}://${location.host}${WS_PATH}${query}`);
    this.socket.binaryType = "arraybuffer";
    this.number = 0;
    this.sent = 0;
    this.player = null;
    this.firstAudioAt = null;
    this.textCompleteAt = null;
    this.socket.onopen = () => this.configure();
    this.socket.onmessage = (message) => this.receive(message.data);
    this.socket.onclose = (event) => {
      $("live-state").textContent = `closed (${event.code})`;
      for (const id of ["live-flush", "live-end", "live-cancel"]) $(id).disabled = true;
      $("live-start").disabled = false;
    };
    this.newUtterance();
  }

  configure() {
    const mode = $("mode").value.replace("-", "_");
    const config = { type: "config", voice_id: $("voice").value, mode, format: "pcm", sample_rate: 24000 };
    if (mode === "instruct") config.instruct_text = $("instruct").value;
    if ($("seed").value !== "") config.seed = Number($("seed").value);
    this.socket.send(JSON.stringify(config));
    $("live-state").textContent = "connected: type away";
    for (const id of ["live-flush", "live-end", "live-cancel"]) $(id).disabled = false;
    $("live-start").disabled = true;
    this.typed();
  }

  newUtterance() {
    this.number += 1;
    this.context = `utterance-${this.number}`;
    this.sent = 0;
  }

  send(message) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ ...message, context_id: this.context }));
  }

  typed() {
    const text = $("live-text").value;
    if (text.length > this.sent) {
      this.send({ type: "text", text: text.slice(this.sent) });
      this.sent = text.length;
    }
  }

  end() {
    this.typed();
    this.send({ type: "end" });
    this.textCompleteAt = performance.now();
    $("live-text").value = "";
    this.newUtterance();
  }

  cancel() {
    this.send({ type: "cancel" });
    if (this.player) this.player.stop();
    $("live-text").value = "";
    this.newUtterance();
  }

  receive(data) {
    if (data instanceof ArrayBuffer) {
      if (this.firstAudioAt === null) this.firstAudioAt = performance.now();
      this.player.pushBytes(new Uint8Array(data));
      return;
    }
    const event = JSON.parse(data);
    if (event.type === "started") {
      this.player = new PcmPlayer(event.sample_rate);
      $("caption").textContent = "";
    } else if (event.type === "chunk") {
      const spoken = document.createElement("span");
      spoken.className = "spoken";
      spoken.textContent = event.text;
      $("caption").append(spoken);
    } else if (event.type === "done") {
      $("live-state").textContent = `${event.context_id}: ${event.cancelled ? "cancelled" : "done"}, ` +
        `${event.duration.toFixed(2)} s in ${event.chunks} chunks`;
    } else if (event.type === "error") {
      say(`${event.error}: ${event.message}`, "error");
    }
  }
}

// --- wiring -----------------------------------------------------------------------------------

function init() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", guarded(async () => {
    localStorage.setItem("cosyvoice.apiKey", $("api-key").value.trim());
    await loadVoices();
  }));
  $("mode").addEventListener("change", () => { $("instruct-label").hidden = $("mode").value !== "instruct"; });
  $("register-form").addEventListener("submit", guarded(registerVoice));
  $("record").addEventListener("click", guarded(toggleRecording));
  $("synthesize").addEventListener("click", guarded(synthesize));
  $("stream").addEventListener("click", guarded(streamSynthesis));
  $("submit-task").addEventListener("click", guarded(submitTask));
  $("live-start").addEventListener("click", guarded(async () => { playground.live = new LiveSession(); }));
  $("live-text").addEventListener("input", () => playground.live && playground.live.typed());
  $("live-flush").addEventListener("click", () => { playground.live.typed(); playground.live.send({ type: "flush" }); });
  $("live-end").addEventListener("click", () => playground.live.end());
  $("live-cancel").addEventListener("click", () => playground.live.cancel());
  guarded(async () => { await Promise.all([loadService(), loadVoices(), refreshTasks()]); say("Ready"); })();
}

init();
