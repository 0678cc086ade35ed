// gpt2-serve playground: plain JavaScript, no build step, no dependencies.
// Lists GET /models, streams one generation at a time over ws /stream (one element per token,
// appended as each `token` message arrives), cancels with {"type": "cancel"}, and shows each
// token's probability and its top alternatives on hover or focus. For a keyword-conditioned model
// (GET /models gives its `keywords`), it asks with keywords, a category and a title and shows the
// title and body the server parses from the document.
"use strict";

// Alternatives asked for per token (TGI's parameters.top_n_tokens, 0-10; 0: none). `?top_n_tokens=0`
// in the page's URL overrides it (for a server that does not support it).
const TOP_N_TOKENS = topNFromUrl(5);
const MODELS_REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  socket: null, // the open WebSocket, or null
  opening: null, // a Promise of the socket while it connects
  requests: 0, // request ids sent so far ("pg-1", "pg-2", ...)
  current: null, // the streaming request: {id, sentAt, firstAt, lastAt, count}
  tokens: new Map(), // token element -> its token message (for the hover panel)
  model: null, // the model chosen in the table (null: the server's default)
  models: new Map(), // name -> the model as GET /models lists it
};

function topNFromUrl(fallback) {
  const given = new URLSearchParams(window.location.search).get("top_n_tokens");
  const n = given === null ? NaN : Number(given);
  return Number.isInteger(n) && n >= 0 && n <= 10 ? n : fallback;
}

// ---- the API key: in this page's memory only (an input's value; never stored) ----

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- models ----

async function loadModels() {
  let body;
  try {
    const r = await fetch("/models", { headers: authHeaders(), cache: "no-store" });
    body = await r.json().catch(() => null);
    if (!r.ok) throw new Error(serverMessage(body) || `GET /models answered ${r.status}`);
  } catch (err) {
    // the server's message as it is; a network failure (TypeError) says where it happened
    showModelsError(err instanceof TypeError ? `GET /models: ${err.message}` : err.message);
    return;
  }
  showModelsError(null);
  renderModels(body.models || []);
}

function serverMessage(body) {
  // TGI's error shape {"error": "...", "error_type": ...}; OpenAI's {"error": {"message": ...}}
  if (!body || body.error === undefined) return null;
  return typeof body.error === "string" ? body.error : body.error.message;
}

function showModelsError(message) {
  $("models-error").hidden = message === null;
  $("models-error").textContent = message || "";
}

function renderModels(models) {
  const tbody = $("models").tBodies[0];
  if (state.model === null && models.length) state.model = models[0].name;
  state.models = new Map(models.map((m) => [m.name, m]));
  tbody.replaceChildren(...models.map(modelRow));
  showKeywordFields();
}

function keywordFormat() {
  // the chosen model's keyword format ({delimiters, max_keywords, ...}), or null
  const m = state.models.get(state.model);
  return (m && m.keywords) || null;
}

function showKeywordFields() {
  const format = keywordFormat();
  $("keywords-fields").hidden = format === null;
  if (format) $("kw-note").textContent = `(comma-separated, at most ${format.max_keywords})`;
}

function modelRow(m) {
  const row = document.createElement("tr");
  row.dataset.model = m.name;
  const pick = document.createElement("input");
  Object.assign(pick, { type: "radio", name: "model", value: m.name, checked: m.name === state.model });
  pick.disabled = m.state !== "ready";
  pick.setAttribute("aria-label", `use ${m.name}`);
  pick.addEventListener("change", () => {
    state.model = m.name;
    showKeywordFields();
  });
  const slots = m.slots ? `${m.slots.busy}/${m.slots.total}` : "–";
  const stateText = m.reason ? `${m.state}: ${m.reason}` : m.state;
  row.append(cell(pick), cell(m.name), cell(stateText, "state"), cell(m.device), cell(slots, "slots"));
  return row;
}

function cell(content, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.append(content);
  return td;
}

// ---- the WebSocket ----

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function socket() {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) return Promise.resolve(state.socket);
  if (state.opening) return state.opening;
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol the server reads
  // (base64url.bearer.<key>) beside "gpt2-serve", the one the server answers with.
  const key = $("api-key").value.trim();
  const protocols = key ? ["gpt2-serve", `base64url.bearer.${base64url(key)}`] : ["gpt2-serve"];
  const ws = new WebSocket(`${scheme}//${window.location.host}/stream`, protocols);
  state.opening = new Promise((resolve, reject) => {
    ws.onopen = () => {
      state.socket = ws;
      state.opening = null;
      resolve(ws);
    };
    // A refused handshake (a missing or wrong API key, a server that is gone) closes with 1006
    // and no reason: the browser is not told why.
    ws.onclose = (event) => {
      state.opening = null;
      reject(new Error(`could not connect to ws /stream (code ${event.code})`));
    };
  });
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  state.opening.then(() => (ws.onclose = (event) => onClose(ws, event)), () => {});
  return state.opening;
}

function onClose(ws, event) {
  // the server closed an open connection: with its reason (overloaded, shutting down, too slow)
  if (state.socket === ws) state.socket = null;
  if (!state.current) return;
  const why = event.reason ? `: ${event.reason}` : "";
  showError(`connection closed (code ${event.code}${why})`);
  finish("error");
}

function onMessage(msg) {
  const cur = state.current;
  if (!cur || (msg.request_id != null && msg.request_id !== cur.id)) return; // an old request's
  if (msg.type === "token") onToken(cur, msg);
  else if (msg.type === "done") onDone(cur, msg);
  else if (msg.type === "error") {
    showError(msg.message);
    finish("error");
  }
}

// ---- one generation ----

async function generate(event) {
  event.preventDefault();
  if (state.current) return;
  let params;
  try {
    params = parameters();
  } catch (err) {
    showError(err.message);
    return;
  }
  clearOutput();
  $("output").append(promptElement($("prompt").value));
  const id = `pg-${++state.requests}`;
  state.current = { id, sentAt: 0, firstAt: 0, lastAt: 0, count: 0 };
  setBusy(true, "connecting");
  try {
    const ws = await socket();
    state.current.sentAt = performance.now();
    ws.send(JSON.stringify({ type: "generate", id, inputs: $("prompt").value, parameters: params }));
    setStatus("streaming");
  } catch (err) {
    showError(err.message);
    finish("error");
  }
}

function parameters() {
  const p = { max_new_tokens: integer("max-new-tokens") };
  if (state.model) p.model = state.model;
  p.do_sample = $("do-sample").checked;
  if (p.do_sample) {
    p.temperature = number("temperature");
    const topK = integer("top-k");
    if (topK) p.top_k = topK;
    const topP = number("top-p");
    if (topP !== null && topP !== 1) p.top_p = topP;
    const seed = integer("seed");
    if (seed !== null) p.seed = seed;
  }
  const stops = $("stop").value.split("\n").filter((s) => s !== "");
  if (stops.length) p.stop = stops;
  if (TOP_N_TOKENS) p.top_n_tokens = TOP_N_TOKENS;
  if (keywordFormat()) Object.assign(p, keywordParameters());
  return p;
}

function keywordParameters() {
  // only what is filled in: none of them makes a plain continuation of the prompt
  const p = {};
  const keywords = $("kw-keywords").value.split(",").map((k) => k.trim()).filter((k) => k !== "");
  if (keywords.length) p.keywords = keywords;
  for (const [name, id] of [["category", "kw-category"], ["title", "kw-title"]]) {
    const value = $(id).value.trim();
    if (value) p[name] = value;
  }
  return p;
}

function number(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${labelOf(id)}: not a number`);
  return value;
}

function integer(id) {
  const value = number(id);
  if (value !== null && !Number.isSafeInteger(value)) throw new Error(`${labelOf(id)}: not a whole number`);
  return value;
}

function labelOf(id) {
  return $(id).closest("label").firstChild.textContent.trim();
}

function onToken(cur, msg) {
  const now = performance.now();
  if (!cur.count) {
    cur.firstAt = now;
    $("ttft").textContent = `${(now - cur.sentAt).toFixed(0)} ms`;
  }
  cur.lastAt = now;
  cur.count += 1;
  $("output").append(tokenElement(msg));
  $("count").textContent = String(cur.count);
  $("tps").textContent = rate(cur);
}

function promptElement(text) {
  // the prompt, shown before the tokens (not a token: no probability, not focusable)
  const span = document.createElement("span");
  span.className = "prompt";
  span.textContent = text;
  return span;
}

function tokenElement(msg) {
  const span = document.createElement("span");
  span.className = "token" + (msg.text === "" ? " empty" : "") + (msg.special ? " special" : "");
  span.tabIndex = 0;
  span.textContent = msg.text;
  span.dataset.index = String(msg.index);
  span.dataset.id = String(msg.id);
  if (msg.logprob != null) span.dataset.logprob = String(msg.logprob);
  state.tokens.set(span, msg);
  return span;
}

function rate(cur) {
  // decode rate: tokens after the first over the time since the first
  const seconds = (cur.lastAt - cur.firstAt) / 1000;
  return cur.count > 1 && seconds > 0 ? ((cur.count - 1) / seconds).toFixed(1) : "–";
}

function onDone(cur, msg) {
  $("finish-reason").textContent = msg.finish_reason;
  $("tps").textContent = rate(cur);
  $("output").dataset.generatedText = msg.generated_text;
  if (msg.keywords_output) showDocument(msg.keywords_output);
  finish("done");
}

function showDocument(doc) {
  // the title and body the server parsed from the keyword document
  $("document-title").textContent = doc.title;
  $("document-body").textContent = doc.body;
  $("document").hidden = false;
}

function finish(status) {
  state.current = null;
  setBusy(false, status);
  loadModels();
}

function cancel() {
  const cur = state.current;
  if (cur && state.socket) state.socket.send(JSON.stringify({ type: "cancel", id: cur.id }));
}

// ---- page state ----

function clearOutput() {
  $("output").replaceChildren();
  delete $("output").dataset.generatedText;
  $("document").hidden = true;
  state.tokens.clear();
  hideInfo();
  showError(null);
  for (const id of ["ttft", "tps", "finish-reason"]) $(id).textContent = "–";
  $("count").textContent = "0";
}

function setBusy(busy, status) {
  $("generate").disabled = busy;
  $("stop-button").disabled = !busy;
  setStatus(status);
}

function setStatus(status) {
  $("status").textContent = status;
  document.body.dataset.state = status; // idle, connecting, streaming, done, error
}

function showError(message) {
  $("error").hidden = message === null;
  $("error").textContent = message || "";
}

// ---- the token panel: probability and top alternatives ----

function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  return p >= 0.1 || p === 0 ? `${p.toFixed(1)}%` : `${p.toExponential(1)}%`;
}

function showInfo(span) {
  const msg = state.tokens.get(span);
  if (!msg) return;
  const info = $("token-info");
  const head = document.createElement("p");
  const own = msg.logprob == null ? "probability unknown" : `p = ${percent(msg.logprob)} (model, temperature 1)`;
  head.append(quoted(msg.text, msg.special), ` ${own}`);
  head.className = "own";
  info.replaceChildren(head);
  if (Array.isArray(msg.top_tokens) && msg.top_tokens.length) info.append(alternatives(msg));
  info.hidden = false;
  span.setAttribute("aria-describedby", "token-info");
  place(info, span);
}

function quoted(text, special) {
  const code = document.createElement("code");
  code.textContent = special ? "<|endoftext|>" : JSON.stringify(text);
  return code;
}

function alternatives(msg) {
  const table = document.createElement("table");
  table.className = "alternatives";
  // top_tokens' log-probabilities are under the distribution the token was drawn from (after
  // temperature and repetition penalty), the token's own logprob under the model (temperature 1)
  table.createCaption().textContent = "Top alternatives, as sampled (after temperature and repetition penalty)";
  for (const alt of msg.top_tokens) {
    const row = table.insertRow();
    row.dataset.id = String(alt.id);
    if (alt.id === msg.id) row.className = "chosen";
    row.insertCell().append(quoted(alt.text, alt.special));
    row.insertCell().textContent = percent(alt.logprob);
  }
  return table;
}

function place(info, span) {
  const box = span.getBoundingClientRect();
  const panel = $("output-panel").getBoundingClientRect();
  info.style.left = `${Math.max(0, Math.min(box.left - panel.left, panel.width - info.offsetWidth))}px`;
  info.style.top = `${box.bottom - panel.top + 4}px`;
}

function hideInfo() {
  $("token-info").hidden = true;
  for (const span of document.querySelectorAll('.token[aria-describedby="token-info"]')) {
    span.removeAttribute("aria-describedby");
  }
}

function onPointer(event) {
  const span = event.target.closest(".token");
  if (span) showInfo(span);
  else if (event.type === "focusout" || event.type === "mouseout") hideInfo();
}

// ---- the attention view ----
// POST /attention answers {"tokens": [{"id", "text"}], "n_layer", "n_head", "layers", "heads",
// "attention": [L][H][T][T]}; static/attention.js draws it (AttentionView.render).

function sendToAttention() {
  // the prompt and what was generated, in one click
  $("attention-input").value = $("prompt").value + ($("output").dataset.generatedText || "");
  showAttention();
}

async function showAttention() {
  const body = { inputs: $("attention-input").value };
  if (state.model) body.model = state.model;
  $("attention-error").hidden = true;
  $("attention-panel").dataset.state = "loading";
  try {
    const r = await fetch("/attention", {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new Error(serverMessage(data) || `POST /attention answered ${r.status}`);
    AttentionView.render($("attention"), data);
    $("attention-panel").dataset.state = "shown";
  } catch (err) {
    $("attention-error").textContent = err instanceof TypeError ? `POST /attention: ${err.message}` : err.message;
    $("attention-error").hidden = false;
    $("attention-panel").dataset.state = "error";
  }
}

// ---- start ----

function start() {
  $("request").addEventListener("submit", generate);
  $("stop-button").addEventListener("click", cancel);
  const output = $("output");
  for (const type of ["mouseover", "focusin"]) output.addEventListener(type, onPointer);
  output.addEventListener("mouseleave", hideInfo);
  output.addEventListener("focusout", (e) => {
    if (!output.contains(e.relatedTarget)) hideInfo();
  });
  document.addEventListener("keydown", (e) => e.key === "Escape" && hideInfo());
  $("api-key").addEventListener("change", loadModels);
  $("attention-form").addEventListener("submit", (e) => {
    e.preventDefault();
    showAttention();
  });
  $("to-attention").addEventListener("click", sendToAttention);
  // The socket carries the key it was opened with: a new key opens a new one (when idle).
  $("api-key").addEventListener("change", () => {
    if (state.socket && document.body.dataset.state !== "streaming") state.socket.close();
  });
  setStatus("idle");
  loadModels();
  setInterval(loadModels, MODELS_REFRESH_MS);
  window.playground = { state, showAttention, TOP_N_TOKENS }; // for tests and the console
}

start();
