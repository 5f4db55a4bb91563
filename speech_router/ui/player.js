// Playing an answer in the page. MP3 (and ADTS AAC) are played as they arrive through Media Source Extensions,
// so a long text starts playing with its first sentence; other formats are played once whole. Raw PCM gets a
// WAV header (24 kHz, 16-bit, mono: what the API sends).
const STREAMED = { mp3: "audio/mpeg", aac: "audio/aac" };
const WHOLE = { opus: "audio/ogg", flac: "audio/flac", wav: "audio/wav", pcm: "audio/wav" };
const PCM_RATE = 24000;

let current = null;

function release(audio) {
  audio.pause();
  if (current) URL.revokeObjectURL(current);
  current = null;
}

function wavOf(pcm) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + pcm.byteLength, true); text(8, "WAVE"); text(12, "fmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, PCM_RATE, true); header.setUint32(28, PCM_RATE * 2, true);
  header.setUint16(32, 2, true); header.setUint16(34, 16, true); text(36, "data");
  header.setUint32(40, pcm.byteLength, true);
  return [header.buffer, pcm];
}

async function whole(audio, response, format) {
  const data = await response.arrayBuffer();
  const parts = format === "pcm" ? wavOf(data) : [data];
  current = URL.createObjectURL(new Blob(parts, { type: WHOLE[format] }));
  audio.src = current;
  await audio.play().catch(() => {}); // autoplay may be refused: the controls still play it
  return data.byteLength;
}

function appended(buffer, chunk) {
  return new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", reject, { once: true });
    buffer.appendBuffer(chunk);
  });
}

async function streamed(audio, response, type, onFirstAudio) {
  const source = new MediaSource();
  current = URL.createObjectURL(source);
  audio.src = current;
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const buffer = source.addSourceBuffer(type);
  const reader = response.body.getReader();
  let bytes = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    await appended(buffer, value);
    if (bytes === 0) {
      onFirstAudio();
      audio.play().catch(() => {});
    }
    bytes += value.byteLength;
  }
  source.endOfStream();
  return bytes;
}

// plays ``response`` (a 200 answer in ``format``); resolves to the bytes received once all arrived
export async function play(audio, response, format, onFirstAudio = () => {}) {
  release(audio);
  const type = STREAMED[format];
  if (type && window.MediaSource && MediaSource.isTypeSupported(type)) {
    return streamed(audio, response, type, onFirstAudio);
  }
  onFirstAudio();
  return whole(audio, response, format);
}
