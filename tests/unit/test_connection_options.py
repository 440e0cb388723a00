"""How kxr connects (services/settings.py `connection_from`): flags > environment > nats context,
field by field; the nats CLI's context files; TLS options reaching nats.connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.settings import (
    ConfigError,
    Connection,
    ConnectionFlags,
    Identity,
    Settings,
    connection_from,
    read_context,
    split_userinfo,
)
from tests.tls_pki import make_pki

NATS_CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""


def kxr_creds(
    tmp_path: Path, role: str, url: str | None = "nats://kx-x:pw@nats.creds:4222", inbox: str = "_INBOX"
) -> Path:
    path = tmp_path / f"{role}.json"
    doc = {
        "role": role,
        "prefix": "kx",
        "user": f"kx-{role}",
        "password": f"pw-{role}",
        "url": url,
        "inbox_prefix": inbox,
    }
    path.write_text(json.dumps(doc))
    return path


def context(tmp_path: Path, name: str, **fields) -> dict[str, str]:
    """A context file as `nats context save` writes it (every field present, empty when unset)."""
    doc = {
        "description": "",
        "url": "",
        "socks_proxy": "",
        "token": "",
        "user": "",
        "password": "",
        "creds": "",
        "nkey": "",
        "cert": "",
        "key": "",
        "ca": "",
        "nsc": "",
        "jetstream_domain": "",
        "jetstream_api_prefix": "",
        "jetstream_event_prefix": "",
        "inbox_prefix": "",
        "user_jwt": "",
        "color_scheme": "",
        "tls_first": False,
        "windows_cert_store": "",
        "windows_cert_match_by": "",
        "windows_cert_match": "",
        "windows_ca_certs_match": None,
    } | fields
    directory = tmp_path / "config" / "nats" / "context"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(doc))
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


@pytest.fixture(autouse=True)
def _root_flags_restored(monkeypatch):
    """The CLI's root options live in a module global for one invocation: none leaks to other tests."""
    from services.cli import common

    monkeypatch.setattr(common, "root_connection_options", {})


# ---- URLs ----------------------------------------------------------------------------------------
def test_a_url_loses_its_password_to_the_identity():
    assert split_userinfo("nats://kx-op:s3cr%40t@h:4222") == ("nats://h:4222", "kx-op", "s3cr@t")
    assert split_userinfo("nats://a:1, nats://u:p@b:2") == ("nats://a:1,nats://b:2", "u", "p")
    assert split_userinfo("h:4222") == ("nats://h:4222", None, None)
    c = connection_from(ConnectionFlags(url="nats://kx-op:pw@h:4222"), {})
    assert c.url == "nats://h:4222" and "pw" not in c.describe()
    assert c.connect_options() == {"user": "kx-op", "password": "pw"}
    token = connection_from(ConnectionFlags(url="nats://TOKEN@h:4222"), {})
    assert token.identity == Identity("--nats-url", token="TOKEN")


def test_a_url_without_a_server_or_with_a_bad_port_is_one_config_error():
    with pytest.raises(ConfigError, match="names no server"):
        connection_from(ConnectionFlags(url=" , "), {})
    with pytest.raises(ConfigError, match="port") as exc:
        connection_from(ConnectionFlags(url="nats://u:secret@h:nope"), {})
    assert "secret" not in str(exc.value)


# ---- precedence --------------------------------------------------------------------------------
def test_flags_beat_the_environment_beats_the_context_field_by_field(tmp_path):
    env = context(tmp_path, "prod", url="nats://ctx:4222", user="ctx-user", password="ctx-pw", ca="/ctx/ca.pem")
    env |= {"KX_CONTEXT": "prod"}
    only_context = connection_from(ConnectionFlags(), env)
    assert only_context.url == "nats://ctx:4222" and only_context.user == "ctx-user"
    assert only_context.tls_ca == Path("/ctx/ca.pem")

    env_url = connection_from(ConnectionFlags(), env | {"KX_NATS_URL": "nats://env:4222"})
    assert env_url.url == "nats://env:4222" and env_url.user == "ctx-user"  # the server from env, who from context

    env_creds = connection_from(ConnectionFlags(), env | {"KX_CREDS": str(kxr_creds(tmp_path, "auditor"))})
    assert env_creds.user == "kx-auditor" and env_creds.url == "nats://nats.creds:4222"

    flags = ConnectionFlags(url="nats://flag:4222", creds=kxr_creds(tmp_path, "operator"), tls_ca=Path("/f/ca.pem"))
    both = connection_from(flags, env | {"KX_NATS_URL": "nats://env-u:env-p@env:4222", "KX_TLS_CA": "/env/ca.pem"})
    assert (both.url, both.user, both.tls_ca) == ("nats://flag:4222", "kx-operator", Path("/f/ca.pem"))
    assert both.identity is not None and both.identity.origin.startswith("--creds")


def test_an_identity_is_never_mixed_across_layers(tmp_path):
    """A user from the flags never takes the password of the environment's user."""
    c = connection_from(
        ConnectionFlags(url="nats://flag-user:flag-pw@h:1"), {"KX_CREDS": str(kxr_creds(tmp_path, "auditor"))}
    )
    assert c.connect_options() == {"user": "flag-user", "password": "flag-pw"}


def test_a_creds_file_names_the_server_below_an_explicit_url_of_its_layer(tmp_path):
    creds = kxr_creds(tmp_path, "producer", inbox="_INBOX")
    assert connection_from(ConnectionFlags(creds=creds), {}).url == "nats://nats.creds:4222"
    assert connection_from(ConnectionFlags(creds=creds, url="nats://other:1"), {}).url == "nats://other:1"
    # the flag's file names the server over the environment's URL: `kxr --creds F` alone says where and who
    assert (
        connection_from(ConnectionFlags(creds=creds), {"KX_NATS_URL": "nats://env:1"}).url == "nats://nats.creds:4222"
    )


def test_kx_creds_beats_the_older_kx_nats_creds_and_keeps_its_inbox_prefix(tmp_path):
    runtime = kxr_creds(tmp_path, "runtime", inbox="_INBOX_kx_runtime")
    old = connection_from(ConnectionFlags(), {"KX_NATS_CREDS": str(runtime)})
    assert old.inbox_prefix == "_INBOX_kx_runtime" and old.connect_options()["inbox_prefix"] == "_INBOX_kx_runtime"
    new = connection_from(
        ConnectionFlags(), {"KX_NATS_CREDS": str(runtime), "KX_CREDS": str(kxr_creds(tmp_path, "auditor"))}
    )
    assert new.user == "kx-auditor" and new.inbox_prefix == "_INBOX"


def test_a_nats_creds_file_is_handed_to_the_client(tmp_path):
    path = tmp_path / "user.creds"
    path.write_text(NATS_CREDS)
    c = connection_from(ConnectionFlags(creds=path, url="nats://h:1"), {})
    assert c.connect_options() == {"user_credentials": str(path)}


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "cannot read credentials"),
        ("{ not json", "not JSON"),
        ('{"user": "u"}', "no user and password"),
        ("[1]", "not a JSON object"),
    ],
)
def test_an_unusable_creds_file_is_one_config_error(tmp_path, content, needle):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=needle) as exc:
        connection_from(ConnectionFlags(creds=path), {})
    assert "\n" not in str(exc.value) and "--creds" in str(exc.value)


# ---- contexts ----------------------------------------------------------------------------------
def test_a_context_as_the_nats_cli_saves_it(tmp_path):
    creds = tmp_path / "ngs.creds"
    creds.write_text(NATS_CREDS)
    env = context(
        tmp_path,
        "ngs",
        url="tls://connect.ngs.global",
        creds=str(creds),
        inbox_prefix="_INBOX_me",
        ca="~/ca.pem",
        cert="/c/cert.pem",
        key="/c/key.pem",
        tls_first=True,
    ) | {"HOME": "/home/me"}
    c = connection_from(ConnectionFlags(context="ngs"), env)
    assert c.url == "tls://connect.ngs.global"
    assert c.identity == Identity("context 'ngs'", creds_file=creds, inbox_prefix="_INBOX_me")
    assert (c.tls_cert, c.tls_key, c.tls_first) == (Path("/c/cert.pem"), Path("/c/key.pem"), True)
    assert c.tls_ca is not None and c.tls_ca.name == "ca.pem" and "~" not in str(c.tls_ca)


def test_a_context_without_url_means_the_local_default_and_a_path_works_as_a_name(tmp_path):
    context(tmp_path, "local", token="t0k")
    path = tmp_path / "config" / "nats" / "context" / "local.json"
    for name in ("local", str(path)):
        c = connection_from(ConnectionFlags(context=name), {"XDG_CONFIG_HOME": str(tmp_path / "config")})
        assert c.url == "nats://127.0.0.1:4222" and c.identity is not None and c.identity.token == "t0k"


def test_the_selected_context_serves_only_where_nothing_names_a_server(tmp_path):
    env = context(tmp_path, "sel", url="nats://sel:4222")
    (tmp_path / "config" / "nats" / "context.txt").write_text("sel\n")
    assert connection_from(ConnectionFlags(), env, use_selected_context=True).url == "nats://sel:4222"
    assert connection_from(ConnectionFlags(), env).url is None  # kxr serve: embedded, not someone's context
    named = connection_from(ConnectionFlags(), env | {"KX_NATS_URL": "nats://env:1"}, use_selected_context=True)
    assert named.url == "nats://env:1" and named.identity is None


@pytest.mark.parametrize(
    "write, needle",
    [
        (None, "unknown context 'c'"),
        ("{ nope", "is not valid JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"nsc": "nsc://op/acc/user"}), "sets nsc, which kxr does not support"),
        (json.dumps({"jetstream_domain": "hub"}), "jetstream_domain"),
        (json.dumps({"user": "u", "creds": "/x.creds"}), "more than one of user, creds, nkey"),
        (json.dumps({"url": 4222}), "url must be a string"),
        (json.dumps({"tls_first": "yes"}), "tls_first must be true or false"),
        (json.dumps({"key": "/k.pem"}), "key without its certificate"),
    ],
)
def test_a_bad_context_is_one_config_error(tmp_path, write, needle):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    if write is not None:
        (tmp_path / "nats" / "context").mkdir(parents=True)
        (tmp_path / "nats" / "context" / "c.json").write_text(write)
    with pytest.raises(ConfigError, match=needle) as exc:
        connection_from(ConnectionFlags(context="c"), env)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ""])
def test_a_context_name_cannot_leave_the_context_directory(tmp_path, name):
    with pytest.raises(ConfigError):
        read_context(name, {"XDG_CONFIG_HOME": str(tmp_path)}, "--context")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--context", "missing", "status"], "unknown context 'missing'"),
        (["--context", "broken", "status"], "is not valid JSON"),
        (["--creds", "/nonexistent/creds.json", "status"], "cannot read credentials"),
        (["--tls-ca", "/nonexistent/ca.pem", "--nats-url", "nats://127.0.0.1:1", "status"], None),
    ],
)
def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    from services.cli.main import run

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("KX_NATS_URL", "KX_CREDS", "KX_NATS_CREDS", "KX_CONTEXT", "KX_TLS_CA", "KX_TLS_CERT", "KX_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "nats" / "context").mkdir(parents=True)
    (tmp_path / "nats" / "context" / "broken.json").write_text("{")
    if args[0] == "--tls-ca":  # a flag after the command: the root option goes before it
        args = ["--tls-ca", "/nonexistent/ca.pem", "status", "--nats-url", "nats://127.0.0.1:1"]
        needle = "cannot read TLS CA /nonexistent/ca.pem"
    monkeypatch.setattr("sys.argv", ["kxr", *args])
    with pytest.raises(SystemExit) as exit_:
        run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.count("\n") == 1 and needle in err, err


def test_root_options_reach_every_command_settings(tmp_path, monkeypatch):
    from services.cli import common
    from services.cli.main import app

    creds = kxr_creds(tmp_path, "auditor")
    for name in ("KX_NATS_URL", "KX_CREDS", "KX_NATS_CREDS", "KX_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["--creds", str(creds), "--tls-ca", "ca.pem", "creds", "--help"])
    assert result.exit_code == 0
    assert ConnectionFlags(**common.root_connection_options) == ConnectionFlags(creds=creds, tls_ca=Path("ca.pem"))
    settings = common.settings_from()
    assert isinstance(settings, Settings)
    assert settings.nats_connection().url == "nats://nats.creds:4222"
    assert settings.nats_connection().user == "kx-auditor"
    assert settings.nats_url == "nats://kx-x:pw@nats.creds:4222"  # as written, for code that connects with a URL


# ---- TLS -----------------------------------------------------------------------------------------
def test_tls_files_that_do_not_load_are_one_config_error(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS CA"):
        Connection(url="tls://h:1", tls_ca=junk).connect_options()
    with pytest.raises(ConfigError, match="cannot read TLS client certificate"):
        Connection(url="tls://h:1", tls_cert=tmp_path / "none.pem", tls_key=junk).connect_options()
    with pytest.raises(ConfigError, match="do not load"):
        Connection(url="tls://h:1", tls_cert=junk, tls_key=junk).connect_options()


async def test_the_options_reach_nats_connect(tmp_path, monkeypatch):
    """What connection_from resolved is what nats.connect gets: servers, user, inbox, TLS context."""
    import ssl

    from services.jetstream import client

    pki = make_pki(tmp_path)
    captured: dict = {}

    async def fake_connect(self, servers, **kwargs):
        captured.update(kwargs, servers=servers)

    monkeypatch.setattr(client.KxClient, "connect", fake_connect)
    env = {"KX_TLS_CA": str(pki.ca), "KX_TLS_CERT": str(pki.client_cert), "KX_TLS_KEY": str(pki.client_key)}
    c = connection_from(ConnectionFlags(creds=kxr_creds(tmp_path, "runtime", inbox="_INBOX_kx_runtime")), env)
    await client.connect_with(c, name="t", reconnect_forever=False)
    assert captured["servers"] == "nats://nats.creds:4222"
    assert (captured["user"], captured["password"], captured["inbox_prefix"]) == (
        "kx-runtime",
        "pw-runtime",
        "_INBOX_kx_runtime",
    )
    assert isinstance(captured["tls"], ssl.SSLContext) and captured["tls"].verify_mode == ssl.CERT_REQUIRED
    assert captured["tls_handshake_first"] is False
    # a default inbox (the runtime's, for kxr runtime simulate) serves where the credentials name none
    captured.clear()
    await client.connect_with(Connection(url="nats://u:p@h:1"), default_inbox="_INBOX_kx_runtime")
    assert captured["inbox_prefix"] == "_INBOX_kx_runtime" and "tls" not in captured
    captured.clear()
    await client.connect_with(c, default_inbox="_INBOX_other")
    assert captured["inbox_prefix"] == "_INBOX_kx_runtime"
