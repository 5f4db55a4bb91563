// The page: take a key, find what it may see (the admin API, the client API, voice uploads) and show that.
import { call, currentKey, setKey } from "./api.js";
import { showFleet, stopFleet } from "./fleet.js";
import { hidePlayground, setUpPlayground, showPlayground } from "./playground.js";
import { setUpVoices, mayUpload, showVoices } from "./voices.js";

function status(text, state) {
  const line = document.getElementById("status");
  line.textContent = text;
  line.dataset.state = state;
}

let generation = 0; // a newer connect (another key) makes an older one's answers moot

async function connect() {
  const mine = ++generation;
  stopFleet();
  hidePlayground();
  showVoices(false);
  status("checking the key…", "checking");
  const [admin, client, voices] = await Promise.all([
    call("/admin/endpoints").then((r) => r.ok), call("/v1/models").then((r) => r.ok), mayUpload()]);
  if (mine !== generation) return;
  if (!admin && !client && !voices) {
    status("This key was refused: it is neither the admin key nor a client key of this router.", "refused");
    return;
  }
  await showFleet(admin);
  if (client) await showPlayground();
  if (mine !== generation) return;
  showVoices(voices);
  const what = [admin && "the fleet (admin)", client && "the playground", voices && "voice uploads"].filter(Boolean);
  status("Connected: this key may use " + what.join(", ") + ".", "connected");
}

function start() {
  setUpPlayground();
  setUpVoices();
  const input = document.getElementById("key");
  input.value = currentKey();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    connect().catch((error) => status("failed: " + error.message, "failed"));
  });
  document.getElementById("forget").addEventListener("click", () => {
    setKey("");
    input.value = "";
    stopFleet();
    hidePlayground();
    showVoices(false);
    status("Key forgotten.", "idle");
  });
  if (currentKey()) connect().catch((error) => status("failed: " + error.message, "failed"));
}

start();
