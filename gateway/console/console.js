"use strict";
// The Crucible console: submit a job and watch it stream, or watch a run's progress.
// Every piece of output is inserted as text (textContent), never as HTML.

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "crucible.api-key";
const RECONNECT_MS = 1000;
const PASSK_REFRESH_MS = 1000;
let config = { jaeger_url: null };

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return data;
}

function setStatus(element, text) {
  element.textContent = text;
}

// An event stream that resumes after a dropped connection from the last event it saw, and
// hands each event to `handlers` once (the server numbers them; ids only grow).
function follow(url, handlers, onState) {
  let lastId = null;
  let source = null;
  let done = false;
  const open = () => {
    const resumeUrl = lastId === null ? url : `${url}&last_event_id=${encodeURIComponent(lastId)}`;
    source = new EventSource(resumeUrl);
    source.onopen = () => onState("streaming");
    source.onerror = () => {
      if (done) return;
      onState("reconnecting…");
      if (source.readyState === EventSource.CLOSED) setTimeout(open, RECONNECT_MS);
    };
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        const id = Number(event.lastEventId);
        if (lastId !== null && id <= lastId) return; // seen already
        lastId = id;
        handler(JSON.parse(event.data));
      });
    }
  };
  open();
  return () => { done = true; source.close(); };
}

function appendOutput(stream, text) {
  const span = document.createElement("span");
  if (stream === "stderr") span.className = "stderr";
  span.textContent = text;
  $("output").appendChild(span);
  $("output").scrollTop = $("output").scrollHeight;
}

let stopJob = () => {};

function watchJob(accepted) {
  stopJob();
  $("job-panel").hidden = false;
  $("result").hidden = true;
  $("trace-link").hidden = true;
  $("output").textContent = "";
  setStatus($("job-id"), accepted.id);
  let attempt = 1;
  const output = (stream) => (event) => {
    if (event.attempt !== attempt) {
      attempt = event.attempt;
      appendOutput("stderr", `\n--- attempt ${attempt} ---\n`);
    }
    appendOutput(stream, event.data);
  };
  stopJob = follow(accepted.events_url, {
    queued: () => setStatus($("job-state"), "queued"),
    started: (event) => { attempt = event.attempt; setStatus($("job-state"), "running"); },
    stdout: output("stdout"),
    stderr: output("stderr"),
    finished: (job) => {
      stopJob();
      setStatus($("job-state"), "finished");
      showResult(job);
    },
  }, (state) => setStatus($("job-state"), state));
}

function showResult(job) {
  $("result").hidden = false;
  setStatus($("verdict"), job.verdict);
  setStatus($("exit-code"), job.exit_code === null ? (job.signal || "-") : String(job.exit_code));
  setStatus($("wall"), `${Number(job.timings.wall_time_s).toFixed(3)} s`);
  setStatus($("memory-peak"), `${Number(job.memory_peak_mb).toFixed(1)} MB`);
  if (config.jaeger_url && job.trace_id) {
    $("trace-link").href = `${config.jaeger_url.replace(/\/$/, "")}/trace/${job.trace_id}`;
    $("trace-link").hidden = false;
  }
}

let stopRun = () => {};

function renderRun(view) {
  const total = view.total ?? view.total_jobs;
  const done = view.done ?? view.counts.finished;
  $("run-progress").max = Math.max(total, 1);
  $("run-progress").value = done;
  setStatus($("run-done"), `${done} / ${total} (${total ? Math.round((100 * done) / total) : 0}%)`);
  const body = $("run-verdicts").querySelector("tbody");
  body.textContent = "";
  for (const [verdict, count] of Object.entries(view.verdicts).sort()) {
    const row = body.insertRow();
    row.insertCell().textContent = verdict;
    row.insertCell().textContent = String(count);
  }
}

function renderPassK(view) {
  const parts = Object.entries(view.pass_at_k).map(([k, v]) => `pass@${k.replace("pass@", "")} = ${v.toFixed(3)}`);
  setStatus($("run-passk"), parts.length ? parts.join("   ") : "");
}

async function openRun(runId) {
  stopRun();
  const view = await api("GET", `/v1/runs/${encodeURIComponent(runId)}?k=1,10,100`);
  $("run-panel").hidden = false;
  setStatus($("run-shown"), view.id);
  setStatus($("run-state"), view.status);
  renderRun(view);
  renderPassK(view);
  let lastRefresh = 0;
  const refreshPassK = async (force) => {
    if (!force && Date.now() - lastRefresh < PASSK_REFRESH_MS) return;
    lastRefresh = Date.now();
    renderPassK(await api("GET", `/v1/runs/${encodeURIComponent(runId)}?k=1,10,100`));
  };
  if (view.status === "finished") return; // nothing more will happen
  let shown = view.counts.finished;
  stopRun = follow(view.events_url, {
    progress: (progress) => {
      // The stream starts at the run's beginning: never move the bar backwards.
      if (progress.done < shown) return;
      shown = progress.done;
      renderRun(progress);
      if (progress.done >= progress.total) {
        stopRun();
        setStatus($("run-state"), "finished");
        refreshPassK(true);
      } else {
        refreshPassK(false);
      }
    },
  }, (state) => setStatus($("run-state"), state));
}

async function loadRecentRuns() {
  const list = $("recent-runs");
  list.textContent = "";
  const page = await api("GET", "/v1/runs?limit=5");
  for (const run of page.runs) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = `${run.id} (${run.total_jobs} jobs)`;
    button.addEventListener("click", () => openRun(run.id).catch(showRunError));
    item.appendChild(button);
    list.appendChild(item);
  }
}

function showRunError(error) {
  $("run-panel").hidden = false;
  setStatus($("run-state"), error.message);
}

async function useKey() {
  const select = $("runtime");
  const runtimes = await api("GET", "/v1/runtimes");
  select.textContent = "";
  for (const runtime of runtimes.runtimes) {
    const option = document.createElement("option");
    option.value = runtime.language;
    option.textContent = `${runtime.language} (${runtime.versions.join(", ")})`;
    select.appendChild(option);
  }
  select.value = runtimes.runtimes.some((r) => r.language === "python") ? "python" : select.value;
  setStatus($("key-status"), "key accepted");
  await loadRecentRuns();
}

document.addEventListener("DOMContentLoaded", () => {
  // The forms work at once: a key typed and sent before the config arrives is not lost to a
  // native submit (which reloads the page), nor overwritten. The config only names Jaeger.
  fetch("/console/config.json")
    .then((r) => r.json())
    .then((loaded) => {
      config = loaded;
    })
    .catch(() => {});
  if (!$("api-key").value) $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    useKey().catch((error) => setStatus($("key-status"), error.message));
  });
  $("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const spec = {
      language: $("runtime").value,
      code: $("code").value,
      stdin: $("stdin").value,
      limits: { wall_time_s: Number($("wall-time").value), memory_mb: Number($("memory").value) },
    };
    try {
      watchJob(await api("POST", "/v1/jobs", spec));
    } catch (error) {
      $("job-panel").hidden = false;
      setStatus($("job-state"), error.message);
    }
  });
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openRun($("run-id").value.trim()).catch(showRunError);
  });
  if (apiKey()) useKey().catch((error) => setStatus($("key-status"), error.message));
});
