// Uploading a voice for the whole fleet (POST /v1/audio/voices, multipart), for keys that may: the admin key or
// a client key with the `voices` scope. Which it is shows from an empty upload: refused for the key (401/403)
// or refused for its missing fields (400), which stores nothing.
import { call, failure } from "./api.js";
import { loadVoices } from "./playground.js";

export async function mayUpload() {
  const response = await call("/v1/audio/voices", { method: "POST", body: new FormData() });
  return response.status === 400;
}

async function upload(event) {
  event.preventDefault();
  const result = document.getElementById("upload-result");
  const value = (id) => document.getElementById(id).value.trim();
  const form = new FormData();
  form.append("audio_sample", document.getElementById("upload-file").files[0]);
  form.append("name", value("upload-name"));
  form.append("consent", value("upload-consent"));
  if (value("upload-description")) form.append("description", value("upload-description"));
  result.textContent = "uploading…";
  delete result.dataset.state;
  try {
    const response = await call("/v1/audio/voices", { method: "POST", body: form });
    if (!response.ok) throw await failure(response);
    const card = (await response.json()).voice;
    result.textContent = "uploaded " + card.id + " (" + card.seconds + " s, sha256 " + card.sha256.slice(0, 12) + "…)";
    result.dataset.state = "done";
    await loadVoices().catch(() => {}); // a voices-only key may not list them
  } catch (error) {
    result.textContent = "failed: " + error.message;
    result.dataset.state = "failed";
  }
}

export function setUpVoices() {
  document.getElementById("upload-form").addEventListener("submit", upload);
}

export function showVoices(allowed) {
  document.getElementById("voices").hidden = !allowed;
}
