// The playground: the models and voices this key may use, a text spoken in any format and speed, with IndexTTS2's
// emotion controls. Plain requests and described emotions go to /v1/audio/speech (OpenAI's API, `instructions`);
// an emotion vector or another voice's emotion to /synthesize (the native API). Both stream.
import { call, el, failure, json } from "./api.js";
import { play } from "./player.js";

const EMOTIONS = ["happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm"];
let voices = [];

function options(select, names, keep) {
  const before = keep ? select.value : null;
  select.replaceChildren(...names.map((name) => el("option", name, { value: name })));
  if (before && names.includes(before)) select.value = before;
}

function showVoices() {
  const model = document.getElementById("model").value;
  const names = voices.filter((v) => !v.models || v.models.includes(model)).map((v) => v.id);
  options(document.getElementById("voice"), names, true);
  options(document.getElementById("emotion-audio"), voices.map((v) => v.id), true);
}

export async function loadVoices() {
  voices = (await json("/v1/audio/voices")).data || [];
  showVoices();
}

function vector() {
  return EMOTIONS.map((name) => Number(document.getElementById("emotion-" + name).value));
}

function request() {
  const value = (id) => document.getElementById(id).value;
  const emotion = document.querySelector("input[name=emotion]:checked").value;
  const common = { model: value("model"), voice: value("voice"), speed: Number(value("speed")) };
  if (emotion === "vector" || emotion === "audio") {
    const spec = emotion === "vector" ? { vector: vector() } : { audio: value("emotion-audio") };
    return ["/synthesize", { ...common, text: value("text"), format: value("format"), stream: true, emotion: spec }];
  }
  const body = { ...common, input: value("text"), response_format: value("format") };
  if (emotion === "text" && value("emotion-text")) body.instructions = value("emotion-text");
  return ["/v1/audio/speech", body];
}

async function speak(event) {
  event.preventDefault();
  const result = document.getElementById("speak-result");
  const button = document.getElementById("speak");
  const format = document.getElementById("format").value;
  const [path, body] = request();
  result.textContent = "speaking…";
  button.disabled = true;
  const started = performance.now();
  try {
    const response = await call(path, { method: "POST", body: JSON.stringify(body),
                                        headers: { "Content-Type": "application/json" } });
    if (!response.ok) throw await failure(response);
    const h = (name) => response.headers.get(name);
    let first = 0;
    const bytes = await play(document.getElementById("audio"), response, format,
                             () => { first = performance.now() - started; });
    const by = h("x-speech-router-endpoint") + " (pool " + h("x-speech-router-pool") + ")";
    const segments = h("x-speech-router-segments") ? ", " + h("x-speech-router-segments") + " segments" : "";
    result.textContent = "spoken by " + by + segments + "; first audio after " + Math.round(first) + " ms, " +
      bytes + " bytes; request " + h("x-request-id");
    result.dataset.state = "done";
  } catch (error) {
    result.textContent = "failed: " + error.message;
    result.dataset.state = "failed";
  } finally {
    button.disabled = false;
  }
}

function sliders() {
  const box = document.getElementById("vector");
  box.replaceChildren(...EMOTIONS.map((name) => {
    const label = el("label", name + " ");
    label.append(el("input", null, { id: "emotion-" + name, type: "range", min: "0", max: "1", step: "0.05",
                                     value: "0" }));
    return label;
  }));
}

export async function showPlayground() {
  const models = (await json("/v1/models")).data.map((m) => m.id);
  options(document.getElementById("model"), models, true);
  await loadVoices();
  document.getElementById("playground").hidden = false;
}

export function hidePlayground() {
  document.getElementById("playground").hidden = true;
}

export function setUpPlayground() {
  sliders();
  document.getElementById("model").addEventListener("change", showVoices);
  document.getElementById("speak-form").addEventListener("submit", speak);
}
