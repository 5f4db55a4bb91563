// The key and the calls: every request carries the key as an Authorization header, never in a URL.
const STORE = "speech-router-key";

let key = sessionStorage.getItem(STORE) || "";

export function currentKey() {
  return key;
}

export function setKey(value) {
  key = value;
  if (value) sessionStorage.setItem(STORE, value);
  else sessionStorage.removeItem(STORE);
}

function headers(extra) {
  const all = new Headers(extra || {});
  if (key) all.set("Authorization", "Bearer " + key);
  return all;
}

// fetch() on this origin with the key; resolves to the Response whatever its status
export function call(path, options = {}) {
  return fetch(path, { ...options, headers: headers(options.headers), cache: "no-store", credentials: "omit" });
}

// JSON of a 2xx answer; otherwise an Error with the API's own message and the status
export async function json(path, options) {
  const response = await call(path, options);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function failure(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    const error = body.error || {};
    message = response.status + ": " + (error.message || body.detail || message);
  } catch (ignored) {
    // not JSON: the status says enough
  }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

// an element with text (never HTML: nothing the API returns is parsed as markup)
export function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}
