"""``speech-router``: serve, check-config, endpoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.request
from typing import Any

from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # its own parser; loads an engine only in that process
        from .worker.cli import main as worker_main

        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="speech-router", description="One stable URL in front of TTS servers.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router")
    serve.add_argument("--config", "-c", default=os.environ.get("SPEECH_ROUTER_CONFIG"),
                       help="YAML config (default: $SPEECH_ROUTER_CONFIG, else $TTS_REMOTE_URL, else embedded espeak)")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--log-level", default=None)

    check = sub.add_parser("check-config", help="validate a config file; exit 1 listing every error")
    check.add_argument("file")

    eps = sub.add_parser("endpoints", help="table of pools and endpoints with live health")
    eps.add_argument("--config", "-c", default=os.environ.get("SPEECH_ROUTER_CONFIG"))
    eps.add_argument("--url", help="ask a running router (its /health) instead of checking from here")

    sub.add_parser("worker", help="serve a local engine on one GPU, e.g. `speech-router worker indextts2 --help` "
                                  "(docs/indextts2-local.md)")

    args = parser.parse_args(argv)
    return {"serve": _serve, "check-config": _check_config, "endpoints": _endpoints}[args.command](args)


def _registry() -> Any:
    from .plugins.manager import backend_registry, create_plugin_manager

    pm = create_plugin_manager()
    return pm, backend_registry(pm)


def _load(path: str | None) -> Any:
    from .config.loader import load_settings

    pm, registry = _registry()
    return pm, load_settings(path, registry=registry)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api.app import create_app

    try:
        pm, settings = _load(args.config)
    except ConfigError as exc:
        print(f"speech-router: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    level = (args.log_level or settings.server.log_level).lower()
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings, pm=pm)  # builds the endpoints, which may still find the config wrong
    except ConfigError as exc:
        print(f"speech-router: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=host, port=port, log_level=level, proxy_headers=False)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from .api.app import settings_summary
    from .config.loader import load_file

    _, registry = _registry()
    try:
        settings = load_file(args.file, registry=registry)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.issues)} error{'s' if len(exc.issues) != 1 else ''}", file=sys.stderr)
        for issue in exc.issues:
            print(issue.format(exc.source), file=sys.stderr)
        return 1
    s = settings_summary(settings)
    print(f"{args.file}: OK: {s['pools']} pools, {s['endpoints']} endpoints, {len(s['models'])} models "
          f"({', '.join(s['models'])}), {s['voices']} voices")
    return 0


def _endpoints(args: argparse.Namespace) -> int:
    if args.url:
        try:
            with urllib.request.urlopen(args.url.rstrip("/") + "/health", timeout=10) as resp:
                data = json.load(resp)
        except urllib.error.HTTPError as exc:  # 503 still carries the table
            data = json.load(exc)
        except OSError as exc:
            print(f"speech-router: cannot reach {args.url}: {exc}", file=sys.stderr)
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


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["pool", "name", "type", "url", "state", "inflight", "max_concurrency", "detail"]
    table = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    sys.exit(main())
