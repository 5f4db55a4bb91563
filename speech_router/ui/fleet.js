// The fleet: every pool and endpoint, refreshed live. The admin key sees /admin/endpoints (queues, attempts);
// another key sees /health (each endpoint's state), which is what it may see.
import { call, el, failure, json } from "./api.js";

const REFRESH_MS = 2000;
let timer = null;

function num(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function shape(latency) {
  if (!latency) return "not learned yet";
  return num(latency.base_s, 2) + " s + " + num(latency.per_char_s * 1000, 1) + " ms/char";
}

function failed(attempts) {
  if (!attempts) return "–";
  return (attempts.error || 0) + (attempts.timeout || 0);
}

function row(ep, admin) {
  const tr = el("tr", null, { "data-endpoint": ep.name, "class": "state-" + ep.state });
  const breaker = ep.breaker || {};
  const limit = admin || ep.concurrency_limit !== undefined
    ? ep.inflight + " / " + ep.concurrency_limit + " (" + ep.cap + ") / " + ep.max_concurrency : String(ep.inflight);
  const cells = [
    ep.name, ep.pool, ep.state + (ep.draining ? " (draining)" : ""),
    (breaker.state || "–") + (breaker.reason ? ": " + breaker.reason : ""),
    limit, ep.latency ? "×" + num(ep.latency.level, 2) : "–", ep.latency ? ep.latency.parallel : "–",
    shape(ep.latency), ep.served, admin ? failed(ep.attempts) : "–", ep.last_error || ep.detail || "",
  ];
  for (const cell of cells) tr.append(el("td", cell));
  tr.title = ep.url || "";
  return tr;
}

function pools(listing) {
  const box = document.getElementById("pools");
  box.replaceChildren();
  for (const [name, pool] of Object.entries(listing.pools || {})) {
    const queue = pool.queue || {};
    const card = el("div", null, { "class": "pool", "data-pool": name });
    card.append(el("strong", name), el("span", pool.type),
      el("span", pool.healthy ? "healthy" : "no endpoint in rotation", { "class": pool.healthy ? "ok" : "bad" }),
      el("span", "queue: " + (queue.interactive || 0) + " interactive, " + (queue.batch || 0) + " batch"));
    box.append(card);
  }
}

async function load(admin) {
  if (admin) return json("/admin/endpoints");
  const response = await call("/health");
  if (response.status === 200 || response.status === 503) return response.json(); // 503: a model has none healthy
  throw await failure(response);
}

async function refresh(admin) {
  const listing = await load(admin);
  const body = document.querySelector("#endpoints tbody");
  body.replaceChildren(...(listing.endpoints || []).map((ep) => row(ep, admin)));
  pools(listing);
  document.getElementById("fleet-source").textContent = admin ? "(admin view)" : "(health view)";
  document.getElementById("fleet-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

export async function showFleet(admin) {
  stopFleet();
  await refresh(admin);
  document.getElementById("fleet").hidden = false;
  timer = setInterval(() => {
    if (!document.hidden) refresh(admin).catch((error) => {
      document.getElementById("fleet-updated").textContent = "refresh failed: " + error.message;
    });
  }, REFRESH_MS);
}

export function stopFleet() {
  if (timer !== null) clearInterval(timer);
  timer = null;
  document.getElementById("fleet").hidden = true;
}
