// The playground page: API key (sessionStorage only) -> model picker (GET /v1/models) -> a form
// generated from the model's parameter schema -> submit on the queue API -> live status over
// SSE (progress bar, step previews) -> the result by kind, with its seed, parameters and
// timings; cancel, the session's history and "copy as" snippets.

import { Api, ApiError, ROOT } from "./api.js";
import { FieldErrors, RequestForm, el } from "./form.js";
import { renderResult, revokeAll } from "./result.js";
import * as snippets from "./snippets.js";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]);
const KEY_ITEM = "genmedia.apiKey";
const MODEL_ITEM = "genmedia.model";
const HISTORY_ITEM = "genmedia.history";
const HISTORY_MAX = 50;
const ORIGIN = location.origin + ROOT;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const errors = new FieldErrors(document.body); // the key, model, prompt and generated fields

const ui = {
  key: $("api-key"),
  keyForm: $("key-form"),
  model: $("model-select"),
  modelInfo: $("model-info"),
  form: $("gen-form"),
  fields: $("fields"),
  prompt: $("prompt"),
  generate: $("generate"),
  cancel: $("cancel"),
  status: $("status"),
  progress: $("progress"),
  preview: $("preview"),
  previewCaption: $("preview-caption"),
  result: $("result"),
  error: $("error"),
  history: $("history"),
  snippet: $("snippet"),
  snippetTabs: document.querySelectorAll("[data-snippet]"),
  copy: $("copy"),
  copied: $("copied"),
};

const state = {
  api: null,
  models: [],
  adapters: [],
  form: null,
  job: null, // the job shown: its submit answer, then its latest status
  abort: null,
  snippetKind: "curl",
  retryTimer: null,
};

// -- errors -------------------------------------------------------------------------------------

function clearError() {
  ui.error.hidden = true;
  ui.error.replaceChildren();
  clearInterval(state.retryTimer);
  errors.clearErrors();
}

/** The global error box; with `fields`, each also shown next to its field when there is one. */
function showError(title, message, hints = []) {
  ui.error.replaceChildren(
    el("strong", { text: title }),
    el("p", { text: message }),
    ...hints.map((h) => el("p", { class: "hint", text: h })),
  );
  ui.error.hidden = false;
}

function showApiError(err, context) {
  if (!(err instanceof ApiError)) {
    showError(`${context}: unexpected error`, String(err?.message ?? err));
    return;
  }
  if (err.status === 401) {
    const hint = "Check the key above (it looks like gm_<id>_<secret>). make serve prints "
      + "the development key at start-up; operators add keys with genmedia tenants add-key.";
    errors.showError("api-key", `${err.message}: the key was refused`);
    showError(`${context}: unauthorized (401)`, err.message, [hint]);
    ui.key.focus();
    return;
  }
  if (err.status === 429) {
    const until = Date.now() + (err.retryAfter ?? 1) * 1000;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      showError(`${context}: refused (429 ${err.type})`, err.message,
        [left > 0 ? `Retry in ${left} s.` : "You can retry now."]);
      ui.error.dataset.retryAfter = String(err.retryAfter ?? "");
      if (left <= 0) clearInterval(state.retryTimer);
    };
    clearInterval(state.retryTimer);
    tick();
    state.retryTimer = setInterval(tick, 1000);
    return;
  }
  const unplaced = [];
  let first = null;
  for (const f of err.fields) {
    const name = errors.fieldFor(f.field);
    const text = f.limit !== null && f.limit !== undefined && !String(f.message).includes(String(f.limit))
      ? `${f.message} (limit ${JSON.stringify(f.limit)})` : f.message;
    if (name && errors.showError(name, text)) first ??= name;
    else unplaced.push(`${f.field}: ${text}`);
  }
  showError(`${context}: ${err.type} (${err.status || "no answer"})`, err.message, unplaced);
  if (first) {
    document.querySelector(`.field[data-field="${first}"]`)
      ?.querySelector("input, select, textarea")?.focus();
  }
}


// -- key and models ----------------------------------------------------------------------------

async function connect() {
  clearError();
  const key = ui.key.value.trim();
  if (!key) {
    errors.showError("api-key", "enter an API key");
    return;
  }
  sessionStorage.setItem(KEY_ITEM, key);
  state.api = new Api(key);
  ui.model.disabled = true;
  ui.model.replaceChildren(el("option", { text: "loading…", value: "" }));
  try {
    const [models, loras] = await Promise.all([
      state.api.models(),
      state.api.loras().catch(() => ({ loras: [] })),
    ]);
    state.models = models.models ?? [];
    state.adapters = loras.loras ?? [];
  } catch (err) {
    ui.model.replaceChildren(el("option", { text: "no models", value: "" }));
    showApiError(err, "Loading models");
    return;
  }
  const wanted = sessionStorage.getItem(MODEL_ITEM);
  ui.model.replaceChildren(...state.models.map((m) => el("option", {
    value: m.id, text: `${m.id} — ${m.task}`,
  })));
  if (state.models.some((m) => m.id === wanted)) ui.model.value = wanted;
  ui.model.disabled = !state.models.length;
  ui.generate.disabled = !state.models.length;
  if (!state.models.length) showError("No models", "This key's tenant may use no model.");
  chooseModel();
}

function currentModel() {
  return state.models.find((m) => m.id === ui.model.value) ?? null;
}

function chooseModel() {
  const model = currentModel();
  if (!model) return;
  sessionStorage.setItem(MODEL_ITEM, model.id);
  ui.modelInfo.textContent = `${model.family_title} · ${model.task} · default class `
    + `${model.priority_class} · ${model.description}`;
  ui.prompt.maxLength = model.parameters.prompt?.maxLength ?? 100000;
  state.form = new RequestForm(ui.fields, model, state.adapters, (file) => state.api.upload(file));
  updateSnippet();
}

// -- a job --------------------------------------------------------------------------------------

function request() {
  return { prompt: ui.prompt.value, ...(state.form?.values() ?? {}) };
}

function setRunning(running) {
  ui.generate.disabled = running;
  ui.cancel.disabled = !running;
  ui.form.setAttribute("aria-busy", String(running));
}

function showStatus(status) {
  state.job = { ...state.job, ...status };
  const p = ui.progress;
  p.dataset.status = status.status;
  let text = status.status;
  if (status.status === "IN_QUEUE") {
    p.removeAttribute("value");
    const eta = status.eta_s === null || status.eta_s === undefined ? "unknown"
      : `~${Math.round(status.eta_s * 10) / 10} s`;
    text = `In queue: ${status.queue_position ?? "?"} ahead, starts in ${eta}`;
  } else if (status.status === "IN_PROGRESS") {
    const { step = 0, total = 0 } = status.progress ?? {};
    if (total > 0) {
      p.max = total;
      p.value = step;
      p.dataset.step = String(step);
      text = `Running: step ${step} of ${total}`;
    } else {
      p.removeAttribute("value");
      text = "Running";
    }
  } else if (status.status === "COMPLETED") {
    p.value = p.max;
    text = "Completed";
  } else {
    text = status.status === "CANCELLED" ? "Cancelled" : `${status.status}: `
      + `${status.error?.type ?? ""} ${status.error?.message ?? ""}`.trim();
  }
  ui.status.textContent = text;
  if (status.preview?.png_base64) {
    ui.preview.src = `data:image/png;base64,${status.preview.png_base64}`;
    ui.preview.hidden = false;
    ui.previewCaption.textContent = `preview of step ${status.preview.step}`;
  }
  rememberJob(state.job);
}

async function follow(job, signal) {
  let last = job;
  try {
    for await (const { event, data } of state.api.stream(job.stream_url, signal)) {
      if (event !== "status" || data?.type === "keepalive") continue;
      last = data;
      showStatus(data);
      if (TERMINAL.has(data.status)) return last;
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
  }
  // The stream ended early (a proxy, a restart): poll until the job ends.
  while (!signal.aborted && !TERMINAL.has(last.status)) {
    await sleep(1000);
    try {
      last = await state.api.status(job.status_url);
      showStatus(last);
    } catch (err) {
      if (err instanceof ApiError && err.status !== 503 && err.status !== 0) throw err;
    }
  }
  return last;
}

async function generate(event) {
  event?.preventDefault();
  if (!state.api || !currentModel() || !ui.cancel.disabled) return;
  clearError();
  const model = currentModel();
  const body = request();
  revokeAll();
  ui.result.replaceChildren();
  ui.result.removeAttribute("data-kind");
  ui.preview.hidden = true;
  ui.previewCaption.textContent = "";
  ui.progress.value = 0;
  ui.progress.max = 1;
  delete ui.progress.dataset.step;
  ui.progress.dataset.status = "SUBMITTING";
  ui.status.textContent = "Submitting…";
  setRunning(true);
  const abort = new AbortController();
  state.abort = abort;
  try {
    await state.form.ready();
    const job = await state.api.submit(model.id, body);
    state.job = { ...job, prompt: body.prompt, request: body };
    showStatus(job);
    const last = await follow(job, abort.signal);
    await finish(last);
  } catch (err) {
    ui.progress.dataset.status = "ERROR";
    ui.status.textContent = "Not submitted";
    if (state.job?.request_id) ui.status.textContent = state.job.status ?? "Error";
    showApiError(err, "Generate");
  } finally {
    setRunning(false);
    state.abort = null;
  }
}

async function finish(last) {
  if (last.status === "COMPLETED") {
    const result = await state.api.result(last.result_url ?? state.job.result_url);
    state.job = { ...state.job, ...result, status: "COMPLETED" };
    rememberJob(state.job);
    await renderResult(ui.result, result, state.api);
  } else if (last.status === "FAILED" || last.status === "EXPIRED") {
    showError(`The job ${last.status === "FAILED" ? "failed" : "expired"}`,
      `${last.error?.type ?? ""}: ${last.error?.message ?? "no detail"}`);
  }
}

async function cancel() {
  const job = state.job;
  if (!job?.cancel_url) return;
  ui.cancel.disabled = true;
  ui.status.textContent = "Cancelling…";
  try {
    await state.api.cancel(job.cancel_url);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 400)) showApiError(err, "Cancel");
  }
}

// -- history ------------------------------------------------------------------------------------

function loadHistory() {
  try {
    return JSON.parse(sessionStorage.getItem(HISTORY_ITEM) ?? "[]");
  } catch {
    return [];
  }
}

function rememberJob(job) {
  if (!job?.request_id) return;
  const entry = {
    request_id: job.request_id, model: job.model, status: job.status,
    prompt: job.prompt ?? job.parameters?.prompt ?? "", submitted_at: job.submitted_at,
    status_url: job.status_url, result_url: job.result_url, request: job.request,
  };
  const list = loadHistory().filter((h) => h.request_id !== entry.request_id);
  const old = loadHistory().find((h) => h.request_id === entry.request_id) ?? {};
  list.unshift({ ...old, ...Object.fromEntries(Object.entries(entry).filter(([, v]) => v !== undefined)) });
  sessionStorage.setItem(HISTORY_ITEM, JSON.stringify(list.slice(0, HISTORY_MAX)));
  renderHistory();
}

function renderHistory() {
  const list = loadHistory();
  ui.history.replaceChildren(...list.map((h) => {
    const when = h.submitted_at ? new Date(h.submitted_at * 1000).toLocaleTimeString() : "";
    const button = el("button", { type: "button", class: "link", "data-request-id": h.request_id },
      el("span", { class: `badge s-${String(h.status).toLowerCase()}`, text: h.status }),
      ` ${h.model} · ${when} · ${h.prompt.slice(0, 60)}`);
    button.addEventListener("click", () => reopen(h));
    return el("li", {}, button);
  }));
  if (!list.length) ui.history.append(el("li", { class: "hint", text: "No jobs yet in this tab." }));
}

async function reopen(entry) {
  if (!state.api || !ui.cancel.disabled) return;
  clearError();
  revokeAll();
  ui.result.replaceChildren();
  ui.preview.hidden = true;
  try {
    const status = await state.api.status(entry.status_url);
    state.job = { ...entry, ...status };
    showStatus(status);
    if (status.status === "COMPLETED") await finish(status);
    else if (!TERMINAL.has(status.status)) {
      setRunning(true);
      const abort = new AbortController();
      state.abort = abort;
      try {
        await finish(await follow(status, abort.signal));
      } finally {
        setRunning(false);
      }
    }
  } catch (err) {
    showApiError(err, "History");
  }
}

// -- snippets -----------------------------------------------------------------------------------

function updateSnippet() {
  const model = currentModel();
  if (!model) {
    ui.snippet.textContent = "";
    return;
  }
  const body = request();
  const text = {
    curl: () => snippets.curl(ORIGIN, model.id, body),
    python: () => snippets.python(ORIGIN, model.id, body),
    openai: () => snippets.openai(ORIGIN, model, body),
  }[state.snippetKind]();
  ui.snippet.textContent = text;
  for (const tab of ui.snippetTabs) {
    tab.setAttribute("aria-selected", String(tab.dataset.snippet === state.snippetKind));
  }
}

async function copySnippet() {
  const text = ui.snippet.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents(ui.snippet);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }
  ui.copied.textContent = "Copied.";
  setTimeout(() => { ui.copied.textContent = ""; }, 2000);
}

// -- wiring -------------------------------------------------------------------------------------

ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  connect();
});
ui.model.addEventListener("change", chooseModel);
ui.form.addEventListener("submit", generate);
ui.form.addEventListener("input", updateSnippet);
ui.form.addEventListener("change", updateSnippet);
ui.form.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e);
});
ui.cancel.addEventListener("click", cancel);
ui.copy.addEventListener("click", copySnippet);
for (const tab of ui.snippetTabs) {
  tab.addEventListener("click", () => {
    state.snippetKind = tab.dataset.snippet;
    updateSnippet();
  });
}

renderHistory();
const saved = sessionStorage.getItem(KEY_ITEM);
if (saved) {
  ui.key.value = saved;
  connect();
}
document.body.dataset.ready = "true";
