"""Without a store nothing new runs: the app imports neither the state package's parts nor redis or limits; the
state package sits below the API and never reaches up into it."""

from __future__ import annotations

import subprocess
import sys

from tests.unit.test_layering import PACKAGE, imports_of

APP = ("from speech_router.api.app import create_app; "
       "from speech_router.config.loader import settings_from_dict; "
       "config = {'pools': {'cpu': {'type': 'espeak'}}, 'models': {'tts-1': ['cpu']}, 'state': STATE}; "
       "create_app(settings_from_dict(config, env={}), env={}); import sys; "
       "print(sorted(m for m in ('redis', 'limits', 'speech_router.state.hub', 'speech_router.state.redis_store') "
       "if m in sys.modules))")


def loaded(state: str) -> str:
    code = APP.replace("STATE", state)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_without_a_store_the_app_loads_none_of_it():
    assert loaded("{}") == "[]"


def test_an_in_process_store_needs_neither_redis_nor_limits():
    assert loaded("{'url': 'memory://'}") == "['speech_router.state.hub']"


def test_the_state_package_imports_nothing_of_the_api():
    for path in (PACKAGE / "state").glob("*.py"):
        above = {name for name in imports_of(path) if name.startswith(("speech_router.api", "speech_router.cli"))}
        assert not above, f"{path.name} imports {sorted(above)}"
