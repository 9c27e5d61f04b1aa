// turnout's dashboard: hash-routed pages over the gateway's JSON endpoints. Plain DOM, no
// library; every value is put in the page as text (textContent), never as markup.
"use strict";

const PAGES = ["overview", "providers", "models", "keys", "requests", "playground"];
const POLL_MS = 2000;
let timer = null;

const $ = (sel) => document.querySelector(sel);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (init.body !== undefined && typeof init.body !== "string") {
    init.body = JSON.stringify(init.body);
    init.headers = { "Content-Type": "application/json", ...(init.headers || {}) };
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  return { ok: response.ok, status: response.status, data };
}

function errorText(data) {
  if (data && typeof data.error === "object") return data.error.message;
  if (data && typeof data.error === "string") return data.error;
  return String(data);
}

// --- session ---------------------------------------------------------------------------------

async function start() {
  const session = await api("/ui/api/session");
  if (!session.ok) { document.body.textContent = errorText(session.data); return; }
  if (!session.data.authenticated) {
    if (!session.data.login_required) {
      document.body.textContent = session.data.message || "The dashboard answers only on this machine.";
      return;
    }
    showLogin();
    return;
  }
  $("#logout").hidden = !session.data.login_required;
  $("#login").hidden = true;
  route();
}

function showLogin() {
  for (const id of PAGES) $("#" + id).hidden = true;
  $("#login").hidden = false;
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = await api("/ui/api/login", { method: "POST", body: { key: $("#login-key").value } });
  $("#login-key").value = "";
  if (!result.ok) { $("#login-error").textContent = errorText(result.data); return; }
  $("#login-error").textContent = "";
  start();
});

$("#logout").addEventListener("click", async () => {
  hideSecret();
  await api("/ui/api/logout", { method: "POST", body: {} });
  location.hash = "";
  showLogin();
});

// --- pages -----------------------------------------------------------------------------------

function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  for (const id of PAGES) $("#" + id).hidden = id !== page;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  clearInterval(timer);
  if (page !== "keys") hideSecret(); // a new key is shown once, on the page that made it
  if (page !== "models") follow(false);
  const refresh = REFRESH[page];
  refresh();
  if (page !== "playground") timer = setInterval(refresh, POLL_MS);
}

window.addEventListener("hashchange", () => { if ($("#login").hidden) route(); });

function fmt(n, digits = 1) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
}

function series(stats) {
  const out = [];
  for (const [backend, entry] of Object.entries(stats.backends || {})) {
    for (const [model, s] of Object.entries(entry.models || {})) out.push({ backend, model, ...s });
  }
  return out;
}

function draw(svg, values) {
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? 600 / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(115 - (v / max) * 110).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "12"); label.setAttribute("font-size", "11");
  label.textContent = `max ${fmt(max, 2)}`;
  svg.replaceChildren(line, label);
}

async function overview() {
  const [result, hist] = await Promise.all([api("/stats"), api("/ui/api/history")]);
  if (!result.ok) return;
  const stats = result.data;
  const all = series(stats);
  const tokensOut = all.reduce((a, s) => a + s.tokens_out, 0);
  const tokensIn = all.reduce((a, s) => a + s.tokens_in, 0);
  const cost = all.reduce((a, s) => a + s.cost, 0);
  // the last hour, server-side, in buckets: the charts survive a reload
  const buckets = hist.ok ? hist.data.data : [];
  const width = hist.ok ? hist.data.bucket_seconds : 10;
  const rates = buckets.map((b) => b.requests / width);
  const errorRates = buckets.map((b) => (b.requests ? b.errors / b.requests : 0));
  const tps = buckets.map((b) => b.tokens_out / width);
  const latency = buckets.map((b) => b.latency_ms || 0);
  const recent = buckets.slice(-7, -1); // the last complete minute
  const minute = recent.reduce((a, b) => a + b.requests, 0);
  const p = (key, q) => Math.max(0, ...all.map((s) => (s[key] && s[key][q]) || 0));
  const cards = [
    ["requests", stats.requests.total], ["errors", stats.requests.error],
    ["req/s (last minute)", fmt(minute / 60, 2)],
    ["error rate", fmt(100 * (stats.requests.total ? stats.requests.error / stats.requests.total : 0), 1) + "%"],
    ["latency p50 ms", fmt(p("latency_ms", "p50"))], ["latency p95 ms", fmt(p("latency_ms", "p95"))],
    ["TTFT p50 ms", fmt(p("ttft_ms", "p50"))], ["TTFT p95 ms", fmt(p("ttft_ms", "p95"))],
    ["tokens in/out", `${tokensIn}/${tokensOut}`],
    ["tokens/s (last minute)", fmt(recent.reduce((a, b) => a + b.tokens_out, 0) / 60, 1)],
    ["cost", "$" + fmt(cost, 4)], ["overhead p50 ms", fmt(stats.overhead_ms && stats.overhead_ms.p50, 3)],
  ];
  $("#cards").replaceChildren(...cards.map(([k, v]) => {
    const card = el("div", null, "card");
    card.dataset.name = k;
    card.append(el("div", v, "v"), el("div", k, "k"));
    return card;
  }));
  draw($("#chart-rps"), rates.length ? rates : [0]);
  draw($("#chart-errors"), errorRates.length ? errorRates : [0]);
  draw($("#chart-tps"), tps.length ? tps : [0]);
  draw($("#chart-latency"), latency.length ? latency : [0]);
  $("#chart-rps").dataset.total = String(buckets.reduce((a, b) => a + b.requests, 0));
  fill($("#series tbody"), all.map((s) => row([
    s.backend, s.model, s.requests, s.failures, fmt(s.latency_ms.p50), fmt(s.latency_ms.p95),
    fmt(s.ttft_ms.p50), `${s.tokens_in}/${s.tokens_out}`, "$" + fmt(s.cost, 4),
  ])));
}

async function providers() {
  const result = await api("/v1/providers");
  if (!result.ok) return;
  fill($("#provider-table tbody"), result.data.data.map((p) => {
    const tr = row([
      p.name + (p.discovered ? " (discovered)" : ""), p.type, p.endpoint || "in process",
      el("span", p.status, p.status), fmt(p.latency_ms, 1), p.circuit, p.in_flight, p.queued,
      (p.models || []).join(", "),
    ]);
    tr.dataset.provider = p.name;
    tr.dataset.status = p.status;
    return tr;
  }));
}

function bar(progress) {
  const outer = el("div", null, "bar");
  const inner = el("span");
  inner.style.width = `${Math.round(100 * (progress || 0))}%`;
  outer.appendChild(inner);
  outer.dataset.progress = String(progress || 0);
  return outer;
}

// While a model loads (from this page or elsewhere) the Models page polls every FAST_MS, so that
// its bar moves with the engine's own progress reports instead of jumping at the 2 s poll.
const FAST_MS = 200;
let fast = null;
let acting = 0; // load and unload requests of this page still in flight

function follow(loading) {
  if (loading && fast === null && !$("#models").hidden) {
    let busy = false;
    fast = setInterval(async () => {
      if (busy) return; // a poll still answering: skip a beat rather than pile up
      busy = true;
      try { await models(); } finally { busy = false; }
    }, FAST_MS);
  } else if ((!loading || $("#models").hidden) && fast !== null) {
    clearInterval(fast);
    fast = null;
  }
}

let asked = 0, shown = 0; // the Models page's polls, numbered: an older answer is not drawn

async function models() {
  const mine = ++asked;
  const [list, provs] = await Promise.all([api("/v1/models"), api("/v1/providers")]);
  if (mine < shown) return; // a later poll has drawn already: the bar never goes back
  shown = mine;
  const local = [];
  if (provs.ok) {
    for (const p of provs.data.data) {
      if (!Array.isArray(p.model_states)) continue; // a backend that loads models on its own
      const seen = new Set();
      for (const m of p.model_states) { local.push({ provider: p.name, ...m }); seen.add(m.name); }
      for (const name of p.models || []) {
        if (!seen.has(name)) local.push({ provider: p.name, name, state: "unloaded", progress: 0 });
      }
    }
  }
  fill($("#local-table tbody"), local.map((m) => {
    const id = `${m.provider}/${m.name}`;
    const button = el("button", m.state === "loaded" ? "Unload" : "Load");
    button.addEventListener("click", () => act(id, m.state === "loaded" ? "unload" : "load"));
    const expiry = m.expires_at ? new Date(m.expires_at * 1000).toLocaleTimeString() : null;
    const tr = row([id, m.state, bar(m.state === "loaded" ? 1 : m.progress), m.waiting, expiry, button]);
    tr.dataset.model = id;
    tr.dataset.state = m.state;
    return tr;
  }));
  if (list.ok) fill($("#model-table tbody"), list.data.data.map((m) => row([m.id, m.owned_by])));
  follow(acting > 0 || local.some((m) => m.state === "loading"));
}

async function act(model, action) {
  $("#model-message").textContent = `${action} ${model}…`;
  const path = `/ui/api/models/${model.split("/").map(encodeURIComponent).join("/")}/${action}`;
  acting += 1;
  follow(true);
  let result;
  try {
    result = await api(path, { method: "POST", body: {} });
  } finally {
    acting -= 1;
  }
  $("#model-message").textContent = result.ok ? `${model}: ${result.data.state}` : errorText(result.data);
  models();
}

// --- keys ----------------------------------------------------------------------------------
// Create, revoke and rotate through /ui/api/keys (the same operations as /v1/keys). A new or
// rotated key is shown once, in #key-secret, until "Done" or leaving the page; lists show the
// prefix only.

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : null;
}

function showSecret(name, key, note) {
  $("#key-secret-name").textContent = name;
  $("#key-secret-value").textContent = key;
  $("#key-secret-note").textContent = note || "";
  $("#key-secret").hidden = false;
}

function hideSecret() {
  $("#key-secret-value").textContent = "";
  $("#key-secret").hidden = true;
}

$("#key-secret-done").addEventListener("click", hideSecret);

async function keyAction(name, action) {
  const path = `/ui/api/keys/${encodeURIComponent(name)}` + (action === "rotate" ? "/rotate" : "");
  const result = action === "rotate"
    ? await api(path, { method: "POST", body: { grace: $("#key-grace").value.trim() || "1h" } })
    : await api(path, { method: "DELETE" });
  if (!result.ok) { $("#keys-message").textContent = errorText(result.data); return; }
  if (action === "rotate") {
    const until = when(result.data.previous_valid_until);
    showSecret(name, result.data.key, `The previous key works until ${until}.`);
    $("#keys-message").textContent = `${name}: rotated`;
  } else {
    $("#keys-message").textContent = `${name}: revoked`;
  }
  keys();
}

function keyButtons(k) {
  const cell = el("span");
  if (k.state !== "active") return cell;
  const rotate = el("button", "Rotate", "rotate");
  rotate.type = "button";
  rotate.addEventListener("click", () => keyAction(k.name, "rotate"));
  const revoke = el("button", "Revoke", "revoke");
  revoke.type = "button";
  revoke.addEventListener("click", () => {
    if (confirm(`Revoke the key ${k.name} (${k.prefix}…)? Requests with it are refused at once.`)) {
      keyAction(k.name, "revoke");
    }
  });
  cell.append(rotate, revoke);
  return cell;
}

function limits(k) {
  const parts = [];
  if (k.rpm) parts.push(`rpm ${k.rpm}`);
  if (k.tpm) parts.push(`tpm ${k.tpm}`);
  if (k.priority && k.priority !== 1) parts.push(`priority ${k.priority}`);
  if (k.admin) parts.push("admin");
  if (k.expires_at) parts.push(`expires ${when(k.expires_at)}`);
  return parts.join(", ") || "none";
}

async function keys() {
  const [result, usage] = await Promise.all([
    api("/ui/api/keys"), api(`/ui/api/usage?since=7d&by=${$("#usage-by").value}`),
  ]);
  if (!result.ok) {
    $("#keys-message").textContent = errorText(result.data);
    fill($("#key-table tbody"), []);
    return;
  }
  fill($("#key-table tbody"), (result.data.data || []).map((k) => {
    const budget = k.budget === null ? "none" : `$${fmt(k.budget, 2)}/${k.budget_period} ($${fmt(k.spent || 0, 4)})`;
    const tr = row([
      k.name, k.prefix + "…", el("span", k.state, k.state === "active" ? "up" : "down"),
      (k.models || []).join(", "), limits(k), budget, when(k.last_used), keyButtons(k),
    ]);
    tr.dataset.key = k.name;
    tr.dataset.prefix = k.prefix;
    tr.dataset.state = k.state;
    return tr;
  }));
  if (!usage.ok) return;
  $("#usage-group").textContent = usage.data.by;
  fill($("#usage-table tbody"), usage.data.data.map((u) => row([
    usage.data.by === "key" && u.key === "-" ? "(no key)" : u[usage.data.by], u.requests, u.errors, u.tokens_in, u.tokens_out, "$" + fmt(u.cost, 4),
  ])));
}

$("#usage-by").addEventListener("change", keys);

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = (id) => $(id).value.trim();
  const number = (id) => (value(id) === "" ? undefined : Number(value(id)));
  const body = {
    name: value("#key-name"),
    models: value("#key-models").split(",").map((m) => m.trim()).filter(Boolean),
    rpm: number("#key-rpm"), tpm: number("#key-tpm"), budget: number("#key-budget"),
    expires: value("#key-expires") || undefined, admin: $("#key-admin").checked,
  };
  const result = await api("/ui/api/keys", { method: "POST", body });
  if (!result.ok) { $("#keys-message").textContent = errorText(result.data); return; }
  $("#key-form").reset();
  showSecret(result.data.name, result.data.key, `Prefix ${result.data.prefix}; send it as 'Authorization: Bearer …'.`);
  $("#keys-message").textContent = `${result.data.name}: created`;
  keys();
});

async function requests() {
  const q = encodeURIComponent($("#request-search").value);
  const result = await api(`/ui/api/requests?q=${q}`);
  if (!result.ok) return;
  fill($("#request-table tbody"), result.data.data.map((r) => {
    const tr = row([
      new Date(r.time * 1000).toLocaleTimeString(), r.request_id, r.key, r.model, r.backend,
      r.error ? `${r.outcome} (${r.error})` : r.outcome, `${r.tokens_in ?? "?"}/${r.tokens_out ?? "?"}`,
      fmt(r.latency_ms), fmt(r.ttft_ms),
    ]);
    tr.dataset.requestId = r.request_id;
    return tr;
  }));
}
$("#request-search").addEventListener("input", requests);

// --- playground --------------------------------------------------------------------------------

async function playground() {
  const result = await api("/v1/models");
  if (!result.ok) return;
  const select = $("#play-model");
  const chosen = select.value;
  select.replaceChildren(...result.data.data.map((m) => {
    const option = el("option", m.id);
    option.value = m.id;
    return option;
  }));
  if (chosen) select.value = chosen;
}

const FRONTS = {
  openai: {
    path: "/v1/chat/completions",
    body: (model, prompt, max) => ({ model, max_tokens: max, stream: true, messages: [{ role: "user", content: prompt }] }),
    piece: (line) => {
      if (!line.startsWith("data: ") || line === "data: [DONE]") return "";
      const data = JSON.parse(line.slice(6));
      if (data.error) throw new Error(data.error.message);
      return (data.choices && data.choices[0] && data.choices[0].delta.content) || "";
    },
  },
  anthropic: {
    path: "/v1/messages",
    body: (model, prompt, max) => ({ model, max_tokens: max, stream: true, messages: [{ role: "user", content: prompt }] }),
    piece: (line) => {
      if (!line.startsWith("data: ")) return "";
      const data = JSON.parse(line.slice(6));
      if (data.type === "error") throw new Error(data.error.message);
      return data.type === "content_block_delta" && data.delta.text ? data.delta.text : "";
    },
  },
  ollama: {
    path: "/api/chat",
    body: (model, prompt, max) => ({ model, stream: true, options: { num_predict: max }, messages: [{ role: "user", content: prompt }] }),
    piece: (line) => {
      if (!line.trim()) return "";
      const data = JSON.parse(line);
      if (data.error) throw new Error(data.error);
      return (data.message && data.message.content) || "";
    },
  },
};

$("#play-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const front = FRONTS[$("#play-front").value];
  const out = $("#play-output"), status = $("#play-status");
  out.textContent = "";
  status.textContent = "streaming…";
  const started = performance.now();
  let first = null, pieces = 0;
  try {
    const response = await fetch(front.path, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(front.body($("#play-model").value, $("#play-prompt").value, Number($("#play-max").value))),
    });
    if (!response.ok) throw new Error(errorText(JSON.parse(await response.text())));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        const text = front.piece(line.trim());
        if (text) {
          if (first === null) first = performance.now() - started;
          pieces += 1;
          out.textContent += text;
          out.dataset.pieces = String(pieces);
        }
      }
    }
    const total = performance.now() - started;
    status.textContent = `done: ${pieces} pieces, first after ${fmt(first)} ms, ${fmt(total)} ms in all (${response.headers.get("x-request-id")})`;
  } catch (error) {
    status.textContent = "error: " + error.message;
  }
});

const REFRESH = { overview, providers, models, keys, requests, playground };
start();
