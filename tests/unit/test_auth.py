"""The Authenticator on its own: where keys come from, how they are checked, the rate limit's window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from speech_router.api.auth import ANONYMOUS, Authenticator, parse_keys_env
from speech_router.api.spec import Access
from speech_router.config.loader import load_file, settings_from_dict
from speech_router.errors import ConfigError

BASE = {"pools": {"cpu": {"type": "espeak"}}, "models": {"m": ["cpu"]}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(auth: dict[str, Any] | None = None, **server: Any) -> Any:
    return settings_from_dict({**BASE, "server": {**server, "auth": auth or {}}}, env={})


def authenticator(auth: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                  clock: Clock | None = None) -> Authenticator:
    return Authenticator.from_settings(settings(auth), env=env or {}, clock=clock)


def test_no_key_known_means_auth_off_and_everyone_anonymous():
    auth = authenticator()
    assert not auth.enabled
    decision = auth.check(Access.CLIENT, None)
    assert (decision.status, decision.client) == (200, ANONYMOUS)


def test_keys_from_env_named_and_unnamed():
    keys = parse_keys_env(" alice=sk-a ,sk-plain,, bob=sk-b=x ")
    assert [k.name for k in keys] == ["alice", "env-2", "bob"]
    auth = Authenticator(keys)
    assert auth.check(Access.CLIENT, "Bearer sk-b=x").client == "bob"  # only the first '=' separates the name
    assert auth.check(Access.CLIENT, "Bearer sk-plain").client == "env-2"
    assert auth.check(Access.CLIENT, "Bearer alice=sk-a").status == 401


def test_a_key_that_is_not_name_equals_secret_is_taken_whole():
    [key] = parse_keys_env("not a name=secret")
    assert Authenticator([key]).check(Access.CLIENT, "Bearer not a name=secret").status == 200


@pytest.mark.parametrize("header,status,reason", [
    (None, 401, "missing_key"), ("", 401, "missing_key"), ("Bearer", 401, "missing_key"),
    ("Basic sk-good", 401, "missing_key"), ("Bearer sk-bad", 401, "invalid_key"),
    ("Bearer sk-good", 200, ""), ("bearer   sk-good ", 200, ""),
])
def test_bearer_header_is_checked(header, status, reason):
    auth = authenticator(env={"SPEECH_ROUTER_API_KEYS": "alice=sk-good"})
    decision = auth.check(Access.CLIENT, header)
    assert (decision.status, decision.reason) == (status, reason)
    assert decision.client == ("alice" if status == 200 else "")


def test_yaml_keys_read_their_secret_from_the_named_variable():
    auth = authenticator({"keys": [{"name": "ci", "key_env": "CI_KEY", "priority": "batch"}]}, env={"CI_KEY": "k1"})
    decision = auth.check(Access.CLIENT, "Bearer k1")
    assert (decision.client, decision.priority) == ("ci", "batch")


def test_yaml_key_whose_variable_is_unset_is_a_config_error_not_an_open_door():
    with pytest.raises(ConfigError) as info:
        authenticator({"keys": [{"name": "ci", "key_env": "CI_KEY"}]}, env={})
    assert "server.auth.keys[0].key_env" in str(info.value) and "CI_KEY" in str(info.value)


def test_two_names_for_one_secret_is_a_config_error():
    with pytest.raises(ConfigError, match="'a' and 'b' have the same secret"):
        authenticator(env={"SPEECH_ROUTER_API_KEYS": "a=same,b=same"})


def test_open_paths_pass_without_a_key_and_are_configurable():
    auth = authenticator({"open_paths": ["/livez"]}, env={"SPEECH_ROUTER_API_KEYS": "k"})
    assert auth.check(auth.access(Access.CLIENT, "/livez"), None).status == 200
    assert auth.check(auth.access(Access.CLIENT, "/metrics"), None).status == 401
    assert auth.check(auth.access(Access.CLIENT, "/livez/x"), None).status == 401  # exact paths only


def test_admin_paths_need_the_admin_key_even_without_client_keys():
    assert authenticator().check(Access.ADMIN, None).status == 403
    auth = authenticator(env={"SPEECH_ROUTER_ADMIN_KEY": "adm", "SPEECH_ROUTER_API_KEYS": "cli"})
    assert auth.check(Access.ADMIN, None).status == 401
    assert auth.check(Access.ADMIN, "Bearer cli").status == 401  # a client key is not the admin key
    assert auth.check(Access.ADMIN, "Bearer adm").client == "admin"
    assert auth.check(Access.CLIENT, "Bearer adm").status == 401  # and the admin key is not a client key


def test_rate_limit_is_a_sliding_window_of_sixty_seconds():
    clock = Clock()
    auth = authenticator({"keys": [{"name": "c", "key_env": "K", "requests_per_minute": 2}]}, env={"K": "k"},
                         clock=clock)
    assert auth.check(Access.CLIENT, "Bearer k").status == 200  # t=1000
    clock.now += 20
    assert auth.check(Access.CLIENT, "Bearer k").status == 200  # t=1020
    clock.now += 10
    refused = auth.check(Access.CLIENT, "Bearer k")  # t=1030: two in the window
    assert (refused.status, refused.reason, refused.client) == (429, "rate_limited", "c")
    assert refused.retry_after == pytest.approx(30.0)  # the first leaves the window at t=1060
    clock.now += 29.9
    assert auth.check(Access.CLIENT, "Bearer k").status == 429  # refusals do not count against the window
    clock.now += 0.2
    assert auth.check(Access.CLIENT, "Bearer k").status == 200  # t=1060.1


def test_rate_windows_survive_a_reload_by_key_name():
    clock = Clock()
    s = settings({"keys": [{"name": "c", "key_env": "K", "requests_per_minute": 1}]})
    old = Authenticator.from_settings(s, env={"K": "k1"}, clock=clock)
    assert old.check(Access.CLIENT, "Bearer k1").status == 200
    new = Authenticator.from_settings(s, env={"K": "k2"}, clock=clock)  # the secret rotated, the name stayed
    new.inherit_rate_limits(old)
    assert new.check(Access.CLIENT, "Bearer k2").status == 429
    fresh = Authenticator.from_settings(s, env={"K": "k2"}, clock=clock)
    assert fresh.check(Access.CLIENT, "Bearer k2").status == 200


def test_keys_file_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "keys.yaml").write_text("- {name: team-a, key: sk-file-a, requests_per_minute: 5}\n"
                                        "- {name: team-b, key: sk-file-b, priority: batch}\n")
    config = tmp_path / "router.yaml"
    config.write_text("pools: {cpu: {type: espeak}}\nmodels: {m: [cpu]}\nserver: {auth: {keys_file: keys.yaml}}\n")
    auth = Authenticator.from_settings(load_file(config), env={})
    assert [(k.name, k.priority, k.requests_per_minute) for k in auth.keys] == [
        ("team-a", None, 5), ("team-b", "batch", None)]
    assert auth.check(Access.CLIENT, "Bearer sk-file-b").client == "team-b"


@pytest.mark.parametrize("text,where", [
    ("- {name: a, key: sk-secret-value, colour: red}\n", "[0].colour: unknown key"),
    ("- {name: a}\n", "[0].key: required"),
    ("- {name: a, key: sk-secret-value, requests_per_minute: 0}\n", "[0].requests_per_minute"),
    ("- {name: 'bad name', key: sk-secret-value}\n", "[0].name"),
    ("- {name: a, key: 12}\n", "[0].key: a non-empty string is required"),
    ("name: a\n", "must be a list"),
    ("- {name: a, key: [\n", "invalid YAML"),
])
def test_keys_file_errors_name_the_file_and_never_the_secret(tmp_path: Path, text, where):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        authenticator({"keys_file": str(path)})
    message = str(info.value)
    assert str(path) in message and where in message
    assert "sk-secret-value" not in message


def test_missing_keys_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read keys file"):
        authenticator({"keys_file": str(tmp_path / "nope.yaml")})


def test_repr_shows_names_never_secrets():
    auth = authenticator(env={"SPEECH_ROUTER_API_KEYS": "alice=sk-very-secret", "SPEECH_ROUTER_ADMIN_KEY": "adm"})
    text = repr(auth) + repr(auth.keys)
    assert "alice" in text and "sk-very-secret" not in text and "adm'" not in text
