# speech-router container image. Build and run (docs/deploy.md):
#
#   docker build -t speech-router .
#   docker run -p 8000:8000 speech-router                                   # embedded espeak engine
#   docker run -p 8000:8000 -e TTS_REMOTE_URL=http://gpu-1:6006 speech-router
#   docker run -p 8000:8000 -v "$PWD/config:/etc/speech-router:ro" \
#              -e SPEECH_ROUTER_CONFIG=/etc/speech-router/config.yaml speech-router
#
# Configuration, in the order the router looks for it:
#   SPEECH_ROUTER_CONFIG  path of the YAML config (or `serve --config PATH`). The documented mount point is
#                         the directory /etc/speech-router/ (mount a directory, so that edits reach the router,
#                         which reloads the file when it changes). Not set here: a configured file that is
#                         missing is an error, and the image must also start without one.
#   TTS_REMOTE_URL        no config file: one URL or a comma-separated list of index-tts-vllm nodes.
#   (neither)             the embedded espeak-ng engine answers every OpenAI model name.
# Secrets: SPEECH_ROUTER_API_KEYS (client keys), SPEECH_ROUTER_ADMIN_KEY (admin API), and any api_key_env.
# Replicas: SPEECH_ROUTER_STATE_URL names the Valkey or Redis they share (docs/replicas.md).
# Data: /var/lib/speech-router, a volume the image's user owns (SPEECH_ROUTER_DATA_DIR): uploaded voices go
# in its voices/ unless the config sets voice_store.directory. Mount a volume there to keep them (compose does;
# on Kubernetes, whose root filesystem is read-only, the Deployment mounts one).

ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: the source tree and pip's build dependencies stay here; only the virtualenv moves on
# (with pip, so that an image built FROM this one can add plugin packages).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY speech_router ./speech_router
# The aac extra adds PyAV, for aac (and the faster opus); libsndfile in the soundfile wheel writes
# mp3, flac and ogg/opus; wav and pcm need no codec. All six formats are then available. The tracing extra
# (OpenTelemetry SDK, OTLP over HTTP) stays unimported until OTEL_EXPORTER_OTLP_ENDPOINT turns traces on; the
# state extra (redis, limits) until SPEECH_ROUTER_STATE_URL (or state.url) names a store.
RUN python -m venv /opt/speech-router \
 && /opt/speech-router/bin/pip install ".[aac,tracing,state]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="speech-router" \
      org.opencontainers.image.description="One stable URL in front of a fleet of text-to-speech servers" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 speech-router \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin speech-router \
 && mkdir -p /etc/speech-router /var/lib/speech-router \
 && chown 10001:10001 /var/lib/speech-router
COPY --from=build /opt/speech-router /opt/speech-router
# Byte code was compiled at install time; nothing is written next to the code, so the root
# filesystem can be mounted read-only.
ENV PATH=/opt/speech-router/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPEECH_ROUTER_DATA_DIR=/var/lib/speech-router
# The user's home is /nonexistent: its data directory (~/.local/share) is nowhere to write, this is.
VOLUME ["/var/lib/speech-router"]
USER 10001:10001
EXPOSE 8000
# /livez answers as long as the process serves HTTP; slim images have no curl, so Python asks.
# It assumes the default port 8000: change it here too if server.port or --port changes it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
ENTRYPOINT ["speech-router"]
CMD ["serve"]
