"""The embedded server's accounts (services/nats_accounts.py `render_server_config`): the service's user in
JetStream's account, every other role's in its own, importing only what the role uses. The pure rules the
rendering rests on; tests/security/test_relayed_answers.py tries the real server."""

from __future__ import annotations

import re

import pytest

from events.subjects import Subjects
from services.nats_accounts import API_ALL, ROLE_ACCOUNTS, covers, deliveries, render_server_config, role_imports
from services.permissions import ACCOUNT, new_credentials, new_runtime_credentials, role_permissions


@pytest.mark.parametrize(
    ("wide", "narrow", "expected"),
    [
        ("$JS.API.>", "$JS.API.STREAM.INFO.KX_RELEASES", True),
        ("$JS.API.>", "$JS.API", False),  # `>` stands for one token or more
        ("kx.health.*.*.*.*", "kx.health.prod.canary.internal.rt-1", True),
        ("kx.health.*.*.*.*", "kx.health.*.*.*.rt-1", True),
        ("kx.health.*.*.*.rt-1", "kx.health.*.*.*.*", False),
        ("kx.release.*.paused", "kx.release.*.*", False),
        ("kx.release.*.*", "kx.release.>", False),  # `*` never covers `>`
        ("kx.release.>", "kx.release.*.*", True),
        ("kx.a", "kx.a.b", False),
    ],
)
def test_covers_is_nats_subject_matching_of_patterns(wide: str, narrow: str, expected: bool) -> None:
    assert covers(wide, narrow) is expected


@pytest.mark.parametrize("role", sorted(ROLE_ACCOUNTS))
def test_a_role_imports_the_whole_api_once_and_what_it_may_publish_without_overlaps(role: str) -> None:
    s = Subjects("kx")
    imports = role_imports(s, role)
    assert imports[0] == API_ALL and sum(x.startswith("$JS.API") for x in imports) == 1
    for i, a in enumerate(imports):  # two imports matching one subject would forward (and store) it twice
        assert not any(covers(a, b) or covers(b, a) for b in imports[i + 1 :]), (a, imports)
    # every subject the role's users may publish reaches KX through exactly one import
    for subject in role_permissions(s, role).publish:
        assert sum(covers(x, subject) or x == subject for x in imports) == 1, subject


def test_each_user_lives_in_its_roles_account_and_only_kx_has_jetstream() -> None:
    s = Subjects("kx")
    creds = [new_credentials(s, r) for r in ("service", *ROLE_ACCOUNTS)] + [new_runtime_credentials(s, "rt-1")]
    text = render_server_config(creds, s)
    blocks = dict(re.findall(r"\n  (KX\w*): \{\n(.*?)\n  \}", text, re.S))
    assert set(blocks) == {ACCOUNT, *ROLE_ACCOUNTS.values()}
    assert "jetstream:" in blocks[ACCOUNT] and "exports: [" in blocks[ACCOUNT]
    users = {name: re.findall(r'user: "([^"]+)"', body) for name, body in blocks.items()}
    assert users == {
        ACCOUNT: ["kx-service"],
        "KX_PRODUCER": ["kx-producer"],
        "KX_RUNTIME": ["kx-runtime", "kx-runtime-rt-1"],
        "KX_OPERATOR": ["kx-operator"],
        "KX_AUDITOR": ["kx-auditor"],
    }
    for account in ROLE_ACCOUNTS.values():
        body = blocks[account]
        # no JetStream of its own (it would answer its users' API requests itself), imports only from KX
        assert "jetstream" not in body and "exports" not in body
        assert all(f"account: {ACCOUNT}," in line for line in body.splitlines() if "service: {" in line)
        assert "publish: {" in body  # every user keeps its own allow list: they limit the whole API import
    # KX exports each import to exactly the accounts that import it; the API answers in streams
    exported = re.findall(r'\{ service: ("[^"]+"), accounts: \[([^\]]+)\](.*?) \}', blocks[ACCOUNT])
    for subject, accounts, rest in exported:
        importers = {ROLE_ACCOUNTS[r] for r in ROLE_ACCOUNTS if subject.strip('"') in role_imports(s, r)}
        assert set(accounts.split(", ")) == importers, subject
        assert ("response_type: stream" in rest) is (subject == f'"{API_ALL}"')


def test_kx_lends_each_role_users_inbox_to_its_roles_account_alone() -> None:
    """A push consumer's deliveries (a stock object-store get, a named push subscription): each user's
    own inbox, as a stream, to its role's account only; the service's user, in KX, needs none."""
    s = Subjects("kx")
    creds = [new_credentials(s, role) for role in ("service", "producer", "runtime", "operator", "auditor")]
    creds += [new_runtime_credentials(s, rid, "nats://127.0.0.1:4222") for rid in ("rt-1", "rt-2")]
    assert deliveries(creds) == {
        ROLE_ACCOUNTS["producer"]: ["_INBOX_kx_producer.>"],
        ROLE_ACCOUNTS["runtime"]: ["_INBOX_kx_runtime.>", "_INBOX_kx_runtime_rt-1.>", "_INBOX_kx_runtime_rt-2.>"],
        ROLE_ACCOUNTS["operator"]: ["_INBOX_kx_operator.>"],
        ROLE_ACCOUNTS["auditor"]: ["_INBOX_kx_auditor.>"],
    }
    text = render_server_config(creds, s)
    for account, inboxes in deliveries(creds).items():
        for inbox in inboxes:
            assert f'{{ stream: "{inbox}", accounts: [{account}] }}' in text
            assert f'{{ stream: {{ account: {ACCOUNT}, subject: "{inbox}" }} }}' in text
    assert text.count('{ stream: "') == 6 and text.count("{ stream: { account:") == 6
