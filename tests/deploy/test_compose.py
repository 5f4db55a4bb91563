"""The local stack (deploy/compose): valid Compose, and consistent with the router, Prometheus and Grafana files.

No container runtime runs here, so the stack itself is not started. What is checked instead: the file against
the Compose specification's JSON schema (shipped in check-jsonschema, offline), with ``docker compose config``
too where a Docker CLI with the compose plugin is installed; every file it mounts exists; the router's config
passes the checks ``serve`` runs; the emulated nodes' command lines parse; Prometheus scrapes the router and
loads the shipped rules; Grafana gets the data source and the shipped dashboard; and the documented load
command, run against a real router with the stack's config in front of emulated nodes, gets speech back.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from speech_router.cli import prepare
from speech_router.config.models import DEFAULT_PORT
from speech_router.emulator.__main__ import _parser as emulator_parser
from tests.conftest import serve_router

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the bind mounts (``./x:/y:ro``) of a service."""
    out = {}
    for volume in service.get("volumes", []):
        host, target = volume.split(":")[:2]
        if host.startswith((".", "/")):
            out[target] = (COMPOSE_DIR / host).resolve()
    return out


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name, for the named volumes (``name:/y``) of a service."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])
            if not volume.startswith((".", "/"))}


def test_the_router_keeps_uploaded_voices_in_a_volume_at_the_images_data_directory():
    """The image's user has no home to write in: uploads go to SPEECH_ROUTER_DATA_DIR, a volume here."""
    from tests.deploy.test_manifests import image_data_dir

    volumes = named_volumes(services()["router"])
    assert image_data_dir() in volumes
    assert volumes[image_data_dir()] in compose()["volumes"]

def emulated_nodes() -> dict[str, Any]:
    """Service name -> parsed emulator arguments, for the services that run ``python -m speech_router.emulator``."""
    return {name: emulator_parser().parse_args(s["command"]) for name, s in services().items()
            if s.get("entrypoint") == ["python", "-m", "speech_router.emulator"]}


def router_config_path() -> Path:
    router = services()["router"]
    config = router["environment"]["SPEECH_ROUTER_CONFIG"]
    directory, name = config.rsplit("/", 1)
    return mounts(router)[directory] / name


# --- the file itself ----------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    path = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_specification():
    assert schema_errors(compose()) == []


def test_the_schema_check_catches_a_misspelt_key():
    bad = copy.deepcopy(compose())
    bad["services"]["router"]["volumnes"] = bad["services"]["router"].pop("volumes")
    assert any("volumnes" in error for error in schema_errors(bad))


def docker_compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=30).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_docker_compose_config_accepts_it():
    command = docker_compose()
    if command is None:
        pytest.skip("no Docker Compose CLI installed (the schema test above still runs)")
    done = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_mounted_file_and_the_build_context_exist():
    for name, service in services().items():
        for target, host in mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


def test_ports_are_published_on_loopback_only():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


# --- the router and its nodes ---------------------------------------------------------------------------------


def test_the_router_serves_its_config_with_the_checks_serve_runs(monkeypatch):
    monkeypatch.delenv("SPEECH_ROUTER_API_KEYS", raising=False)
    _, settings, _ = prepare(str(router_config_path()))
    assert settings.server.host == "0.0.0.0" and settings.server.port == DEFAULT_PORT
    assert services()["router"]["ports"] == [f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}"]
    assert {"tts-1", "indextts2"} <= set(settings.models)


def test_the_routers_endpoints_are_the_emulated_nodes():
    _, settings, _ = prepare(str(router_config_path()))
    urls = {ep.url for pool in settings.pools.values() if pool.type == "index-tts-vllm" for ep in pool.endpoints}
    nodes = emulated_nodes()
    assert len(nodes) == 2
    assert urls == {f"http://{name}:{args.port}" for name, args in nodes.items()}
    for name, args in nodes.items():
        assert args.host == "0.0.0.0" and args.api == "v2" and args.nodes == 1, name
        assert name in services()["router"]["depends_on"]


def routers() -> list[str]:
    """The services that run the router (``serve``)."""
    return [name for name, s in services().items() if s.get("command") == ["serve"]]


def test_two_replicas_share_one_valkey_and_keep_their_own_copy_of_the_voices():
    """The second replica (docs/replicas.md): same image, config and store; its own data volume; its own port."""
    first, second = (services()[name] for name in routers())
    assert first["environment"] == second["environment"]
    url = first["environment"]["SPEECH_ROUTER_STATE_URL"]
    assert url == "redis://valkey:6379/0" and "valkey" in first["depends_on"] and "valkey" in second["depends_on"]
    assert mounts(first) == mounts(second) and named_volumes(first) != named_volumes(second)
    assert second["ports"] == [f"127.0.0.1:8001:{DEFAULT_PORT}"]
    valkey = services()["valkey"]
    assert "--appendonly" in valkey["command"] and valkey["command"][valkey["command"].index("--maxmemory-policy") + 1] \
        == "noeviction"  # uploaded voices live there: kept across restarts, never evicted
    _, settings, _ = prepare(str(router_config_path()))
    maxmemory = valkey["command"][valkey["command"].index("--maxmemory") + 1]
    assert settings.cache.shared_bytes < int(maxmemory.removesuffix("mb")) * 1024 * 1024


# --- Prometheus and Grafana -----------------------------------------------------------------------------------


def prometheus_config() -> tuple[dict[str, Any], dict[str, Path]]:
    prometheus = services()["prometheus"]
    files = mounts(prometheus)
    return yaml.safe_load(files["/etc/prometheus/prometheus.yml"].read_text()), files


def test_prometheus_scrapes_the_router_and_loads_the_shipped_rules():
    config, files = prometheus_config()
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"{name}:{DEFAULT_PORT}" for name in routers()]
    (rules,) = config["rule_files"]
    assert files[rules] == (REPO_ROOT / "deploy" / "prometheus" / "alerts.yml").resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services()["prometheus"]["command"]


def test_promtool_accepts_the_prometheus_config(tmp_path):
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not on PATH (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)")
    config, files = prometheus_config()
    config["rule_files"] = [str(files[path]) for path in config["rule_files"]]  # where they are on this machine
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    done = subprocess.run([exe, "check", "config", str(local)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_gets_the_prometheus_data_source_and_the_shipped_dashboard():
    grafana = services()["grafana"]
    files = mounts(grafana)
    sources = yaml.safe_load((files["/etc/grafana/provisioning/datasources"] / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == ("prometheus", "http://prometheus:9090", True)
    assert services()["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    providers = yaml.safe_load((files["/etc/grafana/provisioning/dashboards"] / "speech-router.yaml").read_text())
    (provider,) = providers["providers"]
    dashboard_dir = provider["options"]["path"]
    dashboards = {target: host for target, host in files.items() if target.startswith(dashboard_dir + "/")}
    assert list(dashboards.values()) == [(REPO_ROOT / "deploy" / "grafana" / "speech-router.json").resolve()]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboards
    dashboard = json.loads(next(iter(dashboards.values())).read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")  # picks the default source


def test_traces_go_to_jaeger_and_the_latency_exemplars_open_them():
    router, prometheus, jaeger = (services()[name] for name in ("router", "prometheus", "jaeger"))
    endpoint = router["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://jaeger:4318"  # OTLP over HTTP, the tracing extra's exporter (the image installs it)
    assert "jaeger" in router["depends_on"] and jaeger["ports"] == ["127.0.0.1:16686:16686"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    files = mounts(services()["grafana"])["/etc/grafana/provisioning/datasources"]
    (prom,) = yaml.safe_load((files / "prometheus.yaml").read_text())["datasources"]
    (traces,) = yaml.safe_load((files / "jaeger.yaml").read_text())["datasources"]
    assert (traces["type"], traces["url"]) == ("jaeger", "http://jaeger:16686")
    assert prom["jsonData"]["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": traces["uid"]}]


# --- the documented load command -----------------------------------------------------------------------------


def load_command() -> str:
    """The one-line load command docs/deploy.md gives for the stack (the block after ``<!-- load-command -->``)."""
    match = re.search(r"<!-- load-command -->\n```sh\n(.+?)\n```", DEPLOY_DOC.read_text(), flags=re.DOTALL)
    assert match, "docs/deploy.md shows the load command after <!-- load-command -->"
    command = match.group(1)
    assert "\n" not in command, "one line"
    return command


@pytest.mark.skipif(not all(shutil.which(t) for t in ("sh", "curl", "xargs", "seq")),
                    reason="the load command needs sh, curl, xargs and seq")
def test_the_documented_load_command_gets_speech_from_the_stacks_router(nodes):
    """The stack's router config in front of two emulated nodes on loopback, and the command as documented
    except for its count and the router's address."""
    command = load_command()
    assert command.count("seq 2000") == 1 and command.count("localhost:8000") == 1
    config = yaml.safe_load(router_config_path().read_text())
    for ep in config["pools"]["gpu"]["endpoints"]:
        ep["url"] = nodes(name=ep["url"].split("//")[1].split(":")[0]).url
    config["server"] = {}  # loopback and a free port (serve_router), not 0.0.0.0:8000
    srv = serve_router(config)
    try:
        run = command.replace("seq 2000", "seq 6").replace("localhost:8000", srv.url.removeprefix("http://"))
        done = subprocess.run(["sh", "-c", run], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["200"] * 6
        with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        srv.stop()
    served = sum(float(v) for v in re.findall(r'^speech_router_requests_total\{[^}]*pool="gpu"[^}]*status="200"'
                                              r'[^}]*\} (\S+)$', text, flags=re.MULTILINE))
    assert served == 6, "every request was served by the emulated GPU pool, as the dashboard will show"
