// The page at /: sends a file or a microphone recording to
// /v1/audio/transcriptions with stream=true, shows each window of speech as
// its event arrives, offers the finished transcript as SRT and VTT, and
// shows the fleet's instances from /fleet (a lone worker: its /health).
"use strict";

const $ = (id) => document.getElementById(id);
const FLEET_REFRESH_MS = 2000;

let modelId = "whisper-1";
let segments = [];
let recording = null;  // a File from the microphone, used instead of the chosen file
let recorder = null;

// The fleet's API key, if it has keys: kept for this tab only.
function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// One line for either error shape: OpenAI's {"error": {...}} or the fleet's {"msg"}.
function reason(body, status) {
  const message = body && ((body.error && body.error.message) || body.msg || body.message);
  return `${status}: ${message || "the server gave no reason"}`;
}

function clock(seconds, marker) {
  const millis = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(Math.floor(millis / 3600000))}:${pad(Math.floor(millis / 60000) % 60)}:` +
         `${pad(Math.floor(millis / 1000) % 60)}${marker}${pad(millis % 1000, 3)}`;
}

function showSegment(segment) {
  const row = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = `${clock(segment.start, ".").slice(3, 10)} – ${clock(segment.end, ".").slice(3, 10)}`;
  const text = document.createElement("span");
  text.textContent = segment.text;
  row.append(time, text);
  $("transcript").append(row);
  row.scrollIntoView({ block: "nearest" });
}

// Subtitle lines of at most 42 characters, cut between words. A cue stays
// one segment: the stream has no word times to cut a segment's time by.
function wrap(text, width = 42) {
  const lines = [];
  for (const word of text.split(" ")) {
    const last = lines.length - 1;
    if (last >= 0 && lines[last].length + 1 + word.length <= width) lines[last] += ` ${word}`;
    else lines.push(word);
  }
  return lines.join("\n");
}

function offerDownloads() {
  const cue = (s, marker) => `${clock(s.start, marker)} --> ${clock(s.end, marker)}\n${wrap(s.text)}\n`;
  const srt = segments.map((s, i) => `${i + 1}\n${cue(s, ",")}`);
  const vtt = segments.map((s) => cue(s, "."));
  for (const [id, body, type] of [["srt", srt.join("\n"), "application/x-subrip"],
                                  ["vtt", "WEBVTT\n\n" + vtt.join("\n"), "text/vtt"]]) {
    URL.revokeObjectURL($(id).href);
    $(id).href = URL.createObjectURL(new Blob([body], { type }));
  }
  $("downloads").hidden = false;
}

// Returns true when the stream has ended (done or failed).
function onEvent(data, started) {
  const event = JSON.parse(data);
  if (event.error) {
    setStatus(`Failed: ${event.error.message}`, true);
    return true;
  }
  if (event.type === "transcript.text.delta") {
    for (const segment of event.segments || []) {
      segments.push(segment);
      showSegment(segment);
    }
    setStatus(`Transcribing… ${segments.length} segment(s) so far`);
  } else if (event.type === "transcript.text.done") {
    const took = (performance.now() - started) / 1000;
    setStatus(`Done: ${event.usage.seconds.toFixed(1)} s of audio in ${took.toFixed(1)} s.`);
    offerDownloads();
    return true;
  }
  return false;
}

async function transcribe(submit) {
  submit.preventDefault();
  const file = recording || $("file").files[0];
  if (!file) {
    setStatus("Choose a recording first, or record one.", true);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", modelId);
  form.append("stream", "true");
  const language = $("language").value.trim();
  const translate = $("task").value === "translate";
  if (language && !translate) form.append("language", language);
  segments = [];
  $("transcript").replaceChildren();
  $("downloads").hidden = true;
  $("submit").disabled = true;
  setStatus(`Sending ${file.name}…`);
  const started = performance.now();
  try {
    const response = await fetch(translate ? "/v1/audio/translations" : "/v1/audio/transcriptions",
                                 { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      setStatus(`Refused ${reason(await response.json().catch(() => null), response.status)}`, true);
      return;
    }
    await readEvents(response.body.getReader(), started);
  } catch (error) {
    setStatus(`Failed: ${error.message}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

// Server-sent events over fetch: blocks end with a blank line, and lines
// starting with ":" are the keep-alive comments a long window sends.
async function readEvents(reader, started) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ") && onEvent(line.slice(6), started)) return;
      }
    }
  }
}

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    recording = new File(chunks, "recording.webm", { type: recorder.mimeType });
    recorder = null;
    $("record").textContent = "● Record";
    setStatus(`Recorded ${(recording.size / 1024).toFixed(0)} KiB: press Transcribe.`);
  };
  recorder.start();
  $("record").textContent = "■ Stop";
  setStatus("Recording… press Stop when done.");
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showInstances(rows) {
  $("instances").replaceChildren(...rows.map((instance) => {
    const health = instance.health || {};
    const state = instance.verdict || instance.state || health.status || "unknown";
    const tr = document.createElement("tr");
    tr.append(cell(instance.name || health.instance), cell(state, state === "ok" ? "ok" : "bad"),
              cell(instance.device || health.device || "?"),
              cell(`${health.in_flight ?? 0} / ${health.max_concurrent ?? "?"}`),
              cell(String(health.requests_total ?? 0)));
    return tr;
  }));
}

// The fleet's status file (written by its health poller); a worker run on
// its own has none, and shows itself from /health.
async function refreshFleet() {
  try {
    const fleet = await fetch("/fleet", { cache: "no-store" });
    if (fleet.ok) {
      const status = await fleet.json();
      $("fleet-summary").textContent = `${status.healthy} of ${status.size} instance(s) healthy, ` +
        `${status.balancing.replace("_", " ")}, updated ${new Date(status.updated).toLocaleTimeString()}`;
      showInstances(status.instances.filter((instance) => instance.active));
      return;
    }
    const health = await (await fetch("/health", { cache: "no-store" })).json();
    $("fleet-summary").textContent = "A single worker (no fleet status here).";
    showInstances([{ name: health.instance, health }]);
  } catch (error) {
    $("fleet-summary").textContent = `Fleet status unavailable: ${error.message}`;
  }
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.status === 401) {
      $("served").textContent = "this fleet needs an API key: enter it above";
      return;
    }
    const models = await response.json();
    modelId = models.data[0].id;
    $("served").textContent = `serving ${modelId}`;
  } catch (error) {
    $("served").textContent = "model list unavailable";
  }
}

$("form").addEventListener("submit", transcribe);
$("key").value = sessionStorage.getItem("asr-api-key") || "";
$("key").addEventListener("change", () => {
  sessionStorage.setItem("asr-api-key", $("key").value.trim());
  showModel();
});
$("file").addEventListener("change", () => { recording = null; });
if (navigator.mediaDevices && window.MediaRecorder) {
  $("record").addEventListener("click", () => toggleRecording().catch(
    (error) => setStatus(`Microphone unavailable: ${error.message}`, true)));
} else {
  $("record").disabled = true;
  $("record").title = "This browser (or a page not on https or localhost) cannot record";
}
showModel();
refreshFleet();
setInterval(refreshFleet, FLEET_REFRESH_MS);
