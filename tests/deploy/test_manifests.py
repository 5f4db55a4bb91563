"""The container image and the Kubernetes manifests: schema-valid, and consistent with each other and the router.

Schema validation (kubernetes-validate, offline: the API schemas ship in the wheel) catches typos and wrong
types; the other tests check what a schema cannot: that probes, ports, selectors, mounts and timings agree
across files, and that the ConfigMap's config is one the router accepts and serves.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from speech_router.cli import prepare
from speech_router.config.loader import settings_from_dict
from speech_router.config.models import DEFAULT_DEADLINE_S, DEFAULT_PORT, Settings
from speech_router.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
DOCKERFILE = REPO_ROOT / "Dockerfile"
EXAMPLE_SECRET = "secret.example.yaml"
NAME_LABEL = {"app.kubernetes.io/name": "speech-router"}
#: the oldest Kubernetes the manifests promise to fit (policy/v1 PDB and autoscaling/v2 HPA are GA there) and the newest
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())

MANIFEST_FILES = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: one resource per file"
    return docs[0]


def by_kind() -> dict[str, dict[str, Any]]:
    resources = [load(name) for name in MANIFEST_FILES]
    kinds = {r["kind"]: r for r in resources}
    assert len(kinds) == len(resources), "one resource of each kind"
    return kinds


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return by_kind()


def pod_spec(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return k8s["Deployment"]["spec"]["template"]["spec"]


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(k8s)["containers"]
    return only


def container_port(k8s: dict[str, dict[str, Any]], port: int | str) -> int:
    """A probe's or Service's port, by number or by name, resolved to the container's port number."""
    ports = container(k8s)["ports"]
    if isinstance(port, str):
        matches = [p["containerPort"] for p in ports if p.get("name") == port]
        assert matches, f"no container port named {port!r}"
        return matches[0]
    assert port in [p["containerPort"] for p in ports], f"{port} is not a container port"
    return port


def env_of(k8s: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(k8s).get("env", [])}


def configmap_settings(k8s: dict[str, dict[str, Any]], registry: Any) -> Settings:
    data = yaml.safe_load(k8s["ConfigMap"]["data"]["config.yaml"])
    return settings_from_dict(data, registry=registry, env={}, source="configmap.yaml")


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_manifest_matches_the_kubernetes_api_schema(name, version):
    kubernetes_validate.validate(load(name), version, strict=True)  # strict: unknown fields are errors


def test_schema_validation_rejects_a_misspelt_field(k8s):
    """The validator really runs offline against strict schemas: a typo a lenient YAML parse would keep fails."""
    bad = copy.deepcopy(k8s["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [n for n in MANIFEST_FILES if n != EXAMPLE_SECRET]
    assert [i["name"] for i in kustomization["images"]] == [container(by_kind())["image"].split(":")[0]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_builds_the_directory():
    out = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


# --- the optional ServiceMonitor (a kustomize component) --------------------------------------

COMPONENT_DIR = K8S_DIR / "components" / "servicemonitor"
#: the ServiceMonitor endpoint fields used here, from the Prometheus Operator's API (monitoring.coreos.com/v1);
#: no offline schema for the CRD ships in a package, so a misspelt field is caught by this list instead
SERVICEMONITOR_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                                  "relabelings", "metricRelabelings", "bearerTokenSecret", "authorization"}


def component() -> tuple[dict[str, Any], dict[str, Any]]:
    kustomization = yaml.safe_load((COMPONENT_DIR / "kustomization.yaml").read_text())
    (resource,) = kustomization["resources"]
    return kustomization, yaml.safe_load((COMPONENT_DIR / resource).read_text())


def test_servicemonitor_is_an_optional_component_left_out_of_the_base(k8s):
    kustomization, monitor = component()
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert "components" not in base, "optional: the base works on clusters without the Prometheus Operator"
    assert "components/servicemonitor" in (K8S_DIR / "kustomization.yaml").read_text()  # shown, commented out
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert NAME_LABEL.items() <= monitor["metadata"]["labels"].items()


def test_servicemonitor_scrapes_the_services_port_at_the_metrics_path(k8s):
    _, monitor = component()
    service = k8s["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= SERVICEMONITOR_ENDPOINT_FIELDS, set(endpoint) - SERVICEMONITOR_ENDPOINT_FIELDS
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]], "a Service port *name*"
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert endpoint["path"] == annotations["prometheus.io/path"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_builds_the_base_with_the_servicemonitor_component(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S_DIR, overlay)],
        "components": [os.path.relpath(COMPONENT_DIR, overlay)]}))
    out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service",
                     "ServiceMonitor"]


# --- what a schema cannot see ---------------------------------------------------------------


def test_every_resource_carries_the_name_label(k8s):
    for kind, resource in k8s.items():
        assert NAME_LABEL.items() <= resource["metadata"]["labels"].items(), kind
    template_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"] == NAME_LABEL
    assert NAME_LABEL.items() <= template_labels.items()


def test_probes_ask_readyz_and_livez_on_the_router_port(k8s, registry):
    c = container(k8s)
    port = configmap_settings(k8s, registry).server.port
    assert port == DEFAULT_PORT
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in c:
            assert container_port(k8s, c[probe]["httpGet"]["port"]) == port, probe
    assert k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_config_is_mounted_as_a_directory_where_speech_router_config_points(k8s):
    config_path = env_of(k8s)["SPEECH_ROUTER_CONFIG"]["value"]
    mounts = {m["mountPath"]: m for m in container(k8s)["volumeMounts"]}
    mount = mounts[os.path.dirname(config_path)]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates, so the router could not reload"
    volume = next(v for v in pod_spec(k8s)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert os.path.basename(config_path) in k8s["ConfigMap"]["data"]


def test_configmap_config_passes_the_routers_validation(k8s, registry):
    settings = configmap_settings(k8s, registry)
    gpu = [p for p in settings.pools.values() if p.type == "index-tts-vllm"]
    assert gpu and all(ep.url and ep.url.endswith(":6006") for p in gpu for ep in p.endpoints)
    assert {"tts-1", "indextts2"} <= set(settings.models)


def test_service_sends_to_the_container_port(k8s):
    service = k8s["Service"]["spec"]
    assert service["selector"].items() <= k8s["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["ports"]
    assert container_port(k8s, port["targetPort"]) == DEFAULT_PORT


def test_pdb_and_hpa_govern_the_deployment(k8s):
    deployment = k8s["Deployment"]
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2 and deployment["spec"]["replicas"] >= 2
    cpu = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(k8s)["resources"]["requests"], "CPU utilisation is measured against the request"
    assert {"cpu", "memory"} <= container(k8s)["resources"]["limits"].keys()


def test_pod_runs_as_the_images_non_root_user_on_a_read_only_root(k8s):
    pod, c = pod_spec(k8s)["securityContext"], container(k8s)
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == image_uid() != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod_spec(k8s)["volumes"] if v["name"] == tmp["name"])


def test_grace_period_covers_the_prestop_sleep_and_the_longest_request(k8s, registry):
    settings = configmap_settings(k8s, registry)
    deadline = max((m.deadline or DEFAULT_DEADLINE_S for m in settings.models.values()), default=DEFAULT_DEADLINE_S)
    command = container(k8s)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod_spec(k8s)["terminationGracePeriodSeconds"] > int(command[1]) + deadline


def test_client_keys_fail_closed_and_the_secret_is_shaped_like_the_example(k8s):
    """Without the Secret the pod must not start with auth off: the client keys' reference is not optional (the
    kubelet refuses to start the container) and the config requires a key (the router refuses to serve)."""
    secret = load(EXAMPLE_SECRET)
    api = env_of(k8s)["SPEECH_ROUTER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert api == {"name": secret["metadata"]["name"], "key": "SPEECH_ROUTER_API_KEYS"}  # no `optional: true`
    admin = env_of(k8s)["SPEECH_ROUTER_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": secret["metadata"]["name"], "key": "SPEECH_ROUTER_ADMIN_KEY", "optional": True}
    for name in ("SPEECH_ROUTER_API_KEYS", "SPEECH_ROUTER_ADMIN_KEY"):
        assert "REPLACE-ME" in secret["stringData"][name]


def test_replicas_find_their_state_store_in_the_secret_when_it_has_one(k8s):
    """SPEECH_ROUTER_STATE_URL may carry a password: from the Secret, and optional (no store: each replica alone)."""
    ref = env_of(k8s)["SPEECH_ROUTER_STATE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": load(EXAMPLE_SECRET)["metadata"]["name"], "key": "SPEECH_ROUTER_STATE_URL", "optional": True}


def test_the_configmap_config_refuses_to_serve_without_a_client_key(k8s, tmp_path, monkeypatch):
    """The same check serve runs at start-up (speech_router.cli.prepare): no key, no router; a key, a router."""
    path = tmp_path / "config.yaml"
    path.write_text(k8s["ConfigMap"]["data"]["config.yaml"])
    monkeypatch.delenv("SPEECH_ROUTER_API_KEYS", raising=False)
    with pytest.raises(ConfigError) as info:
        prepare(str(path))
    assert [issue.loc for issue in info.value.issues] == ["server.auth.required"]
    monkeypatch.setenv("SPEECH_ROUTER_API_KEYS", "web=a-client-key")
    _, _, app = prepare(str(path))
    assert app.state.auth.enabled


def test_configmap_config_serves_and_answers_the_probes(k8s, registry, nodes, router):
    """The ConfigMap's config on a real router (its GPU URLs pointed at emulated nodes): the probe and
    scrape paths the Deployment names answer, and speech comes from the GPU pool."""
    config = yaml.safe_load(k8s["ConfigMap"]["data"]["config.yaml"])
    for ep in config["pools"]["gpu"]["endpoints"]:
        ep["url"] = nodes(name=ep["url"].split("//")[1].split(".")[0]).url
    srv = router(config)
    c = container(k8s)
    paths = [c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
    for path in paths:
        with urllib.request.urlopen(srv.url + path, timeout=5) as resp:
            assert resp.status == 200, path
    scrape = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    with urllib.request.urlopen(srv.url + scrape, timeout=5) as resp:
        assert b"speech_router_" in resp.read()
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": "hello", "response_format": "wav"}).encode()
    req = urllib.request.Request(srv.url + "/v1/audio/speech", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["x-speech-router-pool"] == "gpu"
        assert resp.read()[:4] == b"RIFF"


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def image_uid() -> int:
    (user,) = instructions("USER")
    return int(user.split(":")[0])


def healthcheck_command() -> list[str]:
    (check,) = instructions("HEALTHCHECK")
    return json.loads(check[check.index("CMD") + 3:])


def test_dockerfile_runs_speech_router_serve_as_a_non_root_user():
    uid = image_uid()
    assert uid != 0
    assert any(f"--uid {uid}" in run for run in instructions("RUN")), "USER names the UID the image creates"
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["speech-router"]
    assert json.loads(instructions("CMD")[0]) == ["serve"]
    assert [int(p.split("/")[0]) for p in instructions("EXPOSE")] == [DEFAULT_PORT]


def test_dockerfile_installs_every_audio_format_on_a_slim_python():
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    bases = [shlex.split(f)[0] for f in instructions("FROM")]
    images = [args.get(b.strip("${}"), b) for b in bases]
    assert images and all(i.startswith("python:3.1") and i.endswith("-slim") for i in images)
    extras = [set(m.group(1).split(",")) for run in instructions("RUN")
              for m in re.finditer(r"""pip install ["']\.\[([a-z,]+)\]["']""", run)]
    assert any("aac" in e for e in extras), "aac needs PyAV: the image installs the aac extra"
    assert any("tracing" in e for e in extras), "OTEL_EXPORTER_OTLP_ENDPOINT turns traces on: the image has the SDK"


def image_data_dir() -> str:
    """The image's data directory (``SPEECH_ROUTER_DATA_DIR``), where uploaded voices go by default."""
    (value,) = [part.split("=", 1)[1] for env in instructions("ENV") for part in shlex.split(env.replace("\\", " "))
                if part.startswith("SPEECH_ROUTER_DATA_DIR=")]
    return value


def test_the_image_keeps_its_data_in_a_volume_its_user_owns():
    """The image's user has home /nonexistent: its default data directory would be unwritable, so the image
    names one (a declared volume, owned by that user) and the router puts uploaded voices there."""
    from speech_router.config.datadir import default_voice_directory

    data = image_data_dir()
    assert any(data in json.loads(volume) for volume in instructions("VOLUME"))
    assert any(f"chown {image_uid()}:" in run and data in run for run in instructions("RUN"))
    assert default_voice_directory("/etc/speech-router/config.yaml", {"SPEECH_ROUTER_DATA_DIR": data,
                                                                      "HOME": "/nonexistent"}) == f"{data}/voices"


def test_the_pod_mounts_a_writable_volume_at_the_images_data_directory(k8s):
    """The root filesystem is read-only (and Kubernetes ignores the image's VOLUME): the Deployment mounts one."""
    mount = next(m for m in container(k8s)["volumeMounts"] if m["mountPath"] == image_data_dir())
    assert not mount.get("readOnly")
    volume = next(v for v in pod_spec(k8s)["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_dockerfile_sets_no_config_path_by_default():
    """A configured config file that is missing stops the router, so the image leaves SPEECH_ROUTER_CONFIG
    unset and starts on TTS_REMOTE_URL or the embedded engine when nothing is mounted."""
    assert not any("SPEECH_ROUTER_CONFIG" in env for env in instructions("ENV"))


def test_dockerignore_keeps_what_the_image_copies():
    ignore = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore
    for copy_args in instructions("COPY"):
        if copy_args.startswith("--from"):
            continue
        for source in shlex.split(copy_args)[:-1]:
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_healthcheck_asks_livez_and_fails_when_nothing_listens(nodes, router):
    command = healthcheck_command()
    url = f"http://127.0.0.1:{DEFAULT_PORT}/livez"
    assert command[0] == "python" and url in command[-1]
    node = nodes(name="a")
    srv = router({"pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [{"url": node.url}]}},
                  "models": {"tts-1": ["gpu"]}})
    live = [sys.executable, *command[1:-1], command[-1].replace(url, srv.url + "/livez")]
    assert subprocess.run(live, check=False, capture_output=True, timeout=30).returncode == 0
    srv.stop()
    dead = subprocess.run(live, check=False, capture_output=True, timeout=30)
    assert dead.returncode != 0 and b"Connection refused" in dead.stderr
