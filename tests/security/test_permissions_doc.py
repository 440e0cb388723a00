"""docs/permissions.md lists every right of every role: its generated configuration is the
one the code renders (passwords aside), and its prose names every role and denial."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from events.subjects import Subjects
from services.nats_accounts import render_server_config
from services.permissions import (
    ROLES,
    SERVICE_DURABLES,
    Credentials,
    inbox_for,
    new_runtime_credentials,
    user_name,
)

pytestmark = pytest.mark.security

DOC = Path(__file__).parent.parent.parent / "docs" / "permissions.md"


def documented_config() -> str:
    s = Subjects("kx")
    creds = [
        Credentials(role=r, prefix="kx", user=user_name(s, r), password=f"<{r}-password>", inbox_prefix=inbox_for(s, r))
        for r in ROLES
    ]
    creds.append(replace(new_runtime_credentials(s, "rt-1"), password="<rt-1-password>"))
    return render_server_config(creds, s)


def test_the_documented_configuration_is_the_generated_one():
    text = DOC.read_text()
    block = text[text.index("## The generated configuration") :]
    shown = re.search(r"```\n(.*?)```", block, re.S).group(1)
    assert shown == documented_config(), (
        "docs/permissions.md: regenerate the block from tests/security/test_permissions_doc.py:documented_config"
    )


def test_the_doc_says_what_each_role_cannot_do():
    text = DOC.read_text()
    section = text[text.index("## What each role cannot do") : text.index("## Limits")]
    for role in ("service", "producer", "runtime `ID`", "operator", "auditor"):
        assert f"| {role} |" in section, role
    for durable in SERVICE_DURABLES:
        assert f"`{durable}`" in text, durable
