"""``speech-router``: serve, check-config, endpoints, and the admin commands backends, drain, reload."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from typing import Any

from . import __version__
from .errors import ConfigError

#: where the commands that describe a running router (endpoints, backends, drain, reload) ask by default:
#: ``serve``'s default port on this host
DEFAULT_ROUTER_URL = "http://localhost:8000"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # its own parser; loads an engine only in that process
        from .worker.cli import main as worker_main

        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="speech-router", description="One stable URL in front of TTS servers.")
    parser.add_argument("--version", action="version", version=f"speech-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router")
    serve.add_argument("--config", "-c", default=os.environ.get("SPEECH_ROUTER_CONFIG"),
                       help="YAML config (default: $SPEECH_ROUTER_CONFIG, else $TTS_REMOTE_URL, else embedded espeak)")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--log-level", default=None)

    check = sub.add_parser("check-config", help="run every check serve runs (the file, the environment variables "
                                                "and files it names); exit 1 listing every error")
    check.add_argument("file")

    # commands that describe or steer a running router ask it: --url, else $SPEECH_ROUTER_URL, else this host's
    url_help = f"the running router (default: $SPEECH_ROUTER_URL, else {DEFAULT_ROUTER_URL})"
    eps = sub.add_parser("endpoints", help="pools and endpoints of a running router with live health (its /health)")
    eps.add_argument("--url", default=None, help=url_help)
    eps.add_argument("--config", "-c", default=None,
                     help="instead, check the endpoints a config file names, from here (no router needed)")

    bks = sub.add_parser("backends", help="endpoints of a running router: state, breaker, in-flight, latency "
                                          "(admin API, /admin/endpoints; key from $SPEECH_ROUTER_ADMIN_KEY)")
    bks.add_argument("--url", default=None, help=url_help)
    bks.add_argument("--json", action="store_true", help="print the admin API's JSON")

    drain = sub.add_parser("drain", help="stop sending new requests to an endpoint; those in flight finish")
    drain.add_argument("name")
    drain.add_argument("--undo", action="store_true", help="undrain: take new requests again (with slow start)")
    drain.add_argument("--url", default=None, help=url_help)

    rld = sub.add_parser("reload", help="ask a running router to reload its configuration")
    rld.add_argument("--url", default=None, help=url_help)

    sub.add_parser("worker", help="serve a local engine on one GPU, e.g. `speech-router worker indextts2 --help` "
                                  "(docs/indextts2-local.md)")

    args = parser.parse_args(argv)
    if getattr(args, "url", False) is None and not getattr(args, "config", None):
        args.url = os.environ.get("SPEECH_ROUTER_URL") or DEFAULT_ROUTER_URL
    commands = {"serve": _serve, "check-config": _check_config, "endpoints": _endpoints, "backends": _backends,
                "drain": _drain, "reload": _reload}
    return commands[args.command](args)


def _registry() -> Any:
    from .plugins.manager import backend_registry, create_plugin_manager

    pm = create_plugin_manager()
    return pm, backend_registry(pm)


def _load(path: str | None, host_checks: bool = False) -> Any:
    from .config.loader import load_settings

    pm, registry = _registry()
    return pm, load_settings(path, registry=registry, host_checks=host_checks)


def prepare(path: str | None) -> tuple[Any, Any, Any]:
    """Everything ``serve`` checks before it listens, and ``check-config`` with it: the config (file,
    ``TTS_REMOTE_URL`` or the embedded default), the environment variables and files it names on this host,
    and the app built from it (client keys, keys file, endpoints). Returns (plugin manager, settings, app);
    raises ``ConfigError`` with every problem found, each with its line in ``path``.
    """
    from .api.app import create_app
    from .config.yamlfile import locate
    from .errors import ConfigIssue

    try:
        pm, settings = _load(path, host_checks=True)  # the file, the schema and this host's checks: one report
        issues: list[ConfigIssue] = []
        try:
            app = create_app(settings, pm=pm, config_path=path)
        except ConfigError as exc:
            if exc.source not in ("", settings.source):  # a keys file: located in its own lines
                raise
            issues += exc.issues
        else:
            auth = settings.server.auth
            if auth.required and not app.state.auth.enabled:  # fail closed rather than serve everyone
                issues.append(ConfigIssue("server.auth.required", f"true, but no client key is set: set "
                                          f"{auth.keys_env}, or list keys in server.auth.keys or keys_file"))
        if issues:
            raise ConfigError(issues, source=settings.source)
    except ConfigError as exc:
        raise locate(exc, exc.source or path) from None  # the config file's lines, or a keys file's
    return pm, settings, app


def _config_errors(exc: ConfigError) -> list[str]:
    """Each problem once, as ``file:line: location: message``."""
    return list(dict.fromkeys(issue.format(exc.source) for issue in exc.issues))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import logs
    from .edge import EdgeLimits, raise_open_files_limit, uvicorn_options

    try:
        pm, settings, app = prepare(args.config)
    except ConfigError as exc:
        print("speech-router: invalid configuration:", *_config_errors(exc), sep="\n", file=sys.stderr)
        return 1
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    level = (args.log_level or settings.server.log_level).lower()
    # one handler and one format for every record (ours, uvicorn's, the access log), secrets redacted
    logs.setup_logging(level, settings.server.log_format)
    app.state.reloader.refresh_secrets(settings)
    limits = EdgeLimits.from_settings(settings.server)
    raise_open_files_limit(limits.max_connections)
    # our JSON access lines replace uvicorn's access log: one line per request
    uvicorn.run(app, host=host, port=port, log_level=level, log_config=None, proxy_headers=False,
                server_header=False, access_log=not settings.server.access_log, **uvicorn_options(limits))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from .api.app import settings_summary

    try:
        _, settings, app = prepare(args.file)
    except ConfigError as exc:
        errors = _config_errors(exc)
        print(f"{args.file}: {len(errors)} error{'s' if len(errors) != 1 else ''}", *errors, sep="\n",
              file=sys.stderr)
        return 1
    s = settings_summary(settings, app.state.router)  # endpoints as serve builds them (one per local GPU)
    print(f"{args.file}: OK: {s['pools']} pools, {s['endpoints']} endpoints, {len(s['models'])} models "
          f"({', '.join(s['models'])}), {s['voices']} voices")
    return 0


def _endpoints(args: argparse.Namespace) -> int:
    """The running router's endpoints (its /health), or with ``--config`` those a file names, checked from here."""
    if args.url:
        try:
            with urllib.request.urlopen(args.url.rstrip("/") + "/health", timeout=10) as resp:
                data = json.load(resp)
        except urllib.error.HTTPError as exc:  # 503 still carries the table
            data = json.load(exc)
        except OSError as exc:
            print(f"speech-router: cannot reach a router at {args.url}: {exc} (--url names another one; "
                  "--config FILE checks a config's endpoints from here)", file=sys.stderr)
            return 1
        rows = data["endpoints"]
    else:
        try:
            _, settings = _load(args.config)
        except ConfigError as exc:
            print(f"speech-router: invalid configuration:\n{exc}", file=sys.stderr)
            return 1
        rows = asyncio.run(_check_all(settings))
    _print_table(rows)
    return 0 if all(r["healthy"] for r in rows) else 2


async def _check_all(settings: Any) -> list[dict[str, Any]]:
    from .router.dispatch import Router

    _, registry = _registry()
    router = Router(settings, registry)
    try:
        await router.start()
        return [ep.describe() for ep in router.endpoints]
    finally:
        await router.aclose()


def _admin(url: str, method: str, path: str) -> tuple[int, Any]:
    """Call the admin API with the key from ``$SPEECH_ROUTER_ADMIN_KEY``; (status, JSON body).

    An unreachable router is status 0 with the reason, which ``_admin_failed`` reports.
    """
    try:
        return _admin_call(url, method, path)
    except OSError as exc:
        return 0, {"error": {"message": f"cannot reach it: {exc}"}}


def _admin_call(url: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(url.rstrip("/") + path, method=method, data=b"" if method == "POST" else None)
    key = os.environ.get("SPEECH_ROUTER_ADMIN_KEY", "")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"error": {"message": exc.reason}}


def _admin_failed(status: int, body: Any, url: str) -> bool:
    if 0 < status < 400:
        return False
    message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    said = "failed" if status == 0 else f"answered {status}"
    print(f"speech-router: {url} {said}: {message or body}", file=sys.stderr)
    return True


def _backends(args: argparse.Namespace) -> int:
    status, body = _admin(args.url, "GET", "/admin/endpoints")
    if _admin_failed(status, body, args.url):
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    rows = body["endpoints"]
    for row in rows:
        row["breaker"] = row["breaker"]["state"]
        lat = row.get("latency")
        row["latency"] = f"{lat['base_s']:.3f}s+{lat['per_char_s'] * 1000:.2f}ms/char" if lat else None
        row["limit"] = f"{row['cap']}/{row['concurrency_limit']}/{row['max_concurrency']}"  # now/learned/configured
    _print_table(rows, ["pool", "name", "type", "url", "state", "breaker", "inflight", "limit", "weight",
                        "latency", "served"])
    return 0


def _drain(args: argparse.Namespace) -> int:
    action = "undrain" if args.undo else "drain"
    status, body = _admin(args.url, "POST", f"/admin/endpoints/{args.name}/{action}")
    if _admin_failed(status, body, args.url):
        return 1
    print(f"{body['name']}: {body['state']} ({body['inflight']} in flight)")
    return 0


def _reload(args: argparse.Namespace) -> int:
    status, body = _admin(args.url, "POST", "/admin/reload")
    if status == 422:
        print("speech-router: the new configuration was refused; the running one stays:", file=sys.stderr)
        for line in body.get("errors", []):
            print(f"  {line}", file=sys.stderr)
        return 1
    if _admin_failed(status, body, args.url):
        return 1
    changes = "; ".join(f"{k}: {', '.join(v)}" for k, v in body.get("changes", {}).items() if v)
    print(f"{body['result']}" + (f": {changes}" if changes else ""))
    return 0


def _print_table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> None:
    cols = cols or ["pool", "name", "type", "url", "state", "inflight", "max_concurrency", "detail"]
    table = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
