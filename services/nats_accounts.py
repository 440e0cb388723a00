"""The embedded server's accounts: the service's user in JetStream's account, every other role's in its own.

JetStream publishes each API answer on the reply subject the request named, as the account's internal
client, with no user permission checked; in one account, any role could thus have an answer stored on
a subject a stream captures (docs/permissions.md "JetStream's answers"). Each outside role therefore
lives in an account of its own, importing from `ACCOUNT` only what it uses (`role_imports`): a request
crossing an import gets a fresh reply subject in `ACCOUNT`, and the answer returns through the import
to the requester's own account, where nothing captures it. Each user keeps its permissions
(services/permissions.py), which still decide which API calls it may make. Pure rendering.
"""

from __future__ import annotations

from events.subjects import Subjects

from .permissions import ACCOUNT, API, AccountLimits, Credentials, _q, render_users, role_permissions

# the role accounts, without JetStream of their own (one would answer its users' API requests itself)
ROLE_ACCOUNTS = {"producer": "KX_PRODUCER", "runtime": "KX_RUNTIME", "operator": "KX_OPERATOR", "auditor": "KX_AUDITOR"}
# The embedded server's system account, without users: it exports to KX the two requests the service's
# watchdog makes (services/jetstream/watchdog.py): an account's connections, and disconnecting one.
SYSTEM_ACCOUNT = "SYS"
WATCHDOG_SUBJECTS = ("$SYS.REQ.ACCOUNT.*.CONNZ", "$SYS.REQ.SERVER.*.KICK")
API_ALL = API + ".>"
DEFAULT_LIMITS = AccountLimits()


def account_of(creds: Credentials) -> str:
    """The account a user lives in: the service's in KX, every other role's in its role's account."""
    return ACCOUNT if creds.role == "service" else ROLE_ACCOUNTS[creds.role]


def covers(wide: str, narrow: str) -> bool:
    """Whether every subject `narrow` matches is matched by `wide` too (NATS wildcards, token-wise)."""
    w, n = wide.split("."), narrow.split(".")
    for i, token in enumerate(w):
        if token == ">":
            return len(n) > i
        if i >= len(n) or (token == "*" and n[i] == ">") or token not in ("*", n[i]):
            return False
    return len(w) == len(n)


def role_imports(subjects: Subjects, role: str) -> tuple[str, ...]:
    """What a role's account imports from KX, each as a service (so JetStream's answer, a publish's
    ack included, returns to the requester's account):

    - the whole JetStream API: nats-server attributes a request that crosses a narrower import
      (`$JS.API.STREAM.INFO.<stream>`) to the role's own account, which has no JetStream. So each
      user's publish allow list stays what limits the API calls it may make (`Permissions`);
    - every other subject the role may publish, from the role's widest user (the shared runtime
      user's `<p>.health.*.*.*.*`: each runtime's own user is narrowed by its permissions), so a
      user added later (`kxr creds runtime add`) changes no import and a reload takes it;
    - no two that overlap: a message matching two imports is forwarded, and stored, twice.
    """
    perms = role_permissions(subjects, role)
    own = (x for x in perms.publish if not covers(API_ALL, x) and not x.startswith(perms.inbox_prefix))
    wanted = list(dict.fromkeys([API_ALL, *own]))  # each once: a subject imported twice is forwarded twice
    return tuple(
        x for i, x in enumerate(wanted) if not any(covers(o, x) for o in wanted[:i] + wanted[i + 1 :] if o != x)
    )


def _exports(subjects: Subjects, indent: str, threshold_s: float) -> list[str]:
    """KX's exports: each subject some role imports, to exactly the accounts that import it. The API
    answers many times to one request (a pull's messages, a batched direct get): `response_type: stream`."""
    to: dict[str, list[str]] = {}
    for role, account in ROLE_ACCOUNTS.items():
        for subject in role_imports(subjects, role):
            to.setdefault(subject, []).append(account)
    return [
        f"{indent}{{ service: {_q(subject)}, accounts: [{', '.join(accounts)}]"
        + (f', response_type: stream, response_threshold: "{threshold_s:g}s"' if subject == API_ALL else "")
        + " }"
        for subject, accounts in to.items()
    ]


def _account(name: str, limits: str, users: str, links: dict[str, list[str]], indent: str) -> list[str]:
    """One account's block: its limits, users, and each of `links` (exports, imports) that has any."""
    out = [f"{indent}{name}: {{", *([limits] if limits else []), f"{indent}  users: [", users, f"{indent}  ]"]
    for key, items in links.items():
        if items:
            out += [f"{indent}  {key}: [", *items, f"{indent}  ]"]
    return out + [f"{indent}}}"]


def _import(account: str, subject: str) -> str:
    return f"      {{ service: {{ account: {account}, subject: {_q(subject)} }} }}"


def deliveries(items: list[Credentials]) -> dict[str, list[str]]:
    """By role account: the inboxes (`<inbox prefix>.>`) KX lends it as streams, one per user. A push
    consumer (any client's ordered consumer: nats.py's and nats.go's object-store get; a named push
    subscription on the log) lives in KX and JetStream delivers its messages there, on the deliver
    subject its creator named; without the stream import they never reach the reader's account. Each
    user may subscribe to its own prefix only, so no role or runtime receives another's deliveries."""
    out: dict[str, list[str]] = {}
    for c in items:
        if c.role in ROLE_ACCOUNTS:
            out.setdefault(ROLE_ACCOUNTS[c.role], []).append(f"{c.inbox_prefix}.>")
    return {account: list(dict.fromkeys(subjects)) for account, subjects in out.items()}


def render_accounts(
    creds: dict[str, Credentials] | list[Credentials],
    subjects: Subjects,
    limits: AccountLimits = DEFAULT_LIMITS,
    runtime_identity: str = "shared",
    system: bool = False,
) -> str:
    """The `accounts { ... }` block: the service's user in KX (which owns JetStream), and each other
    role's users (`render_users`: the same least-privilege permissions) in the role's own account
    importing from KX only `role_imports`. Every account has limits (`AccountLimits`: JetStream for
    KX, connections and subscriptions per connection for each), so no user can exhaust the server,
    and no role's connections can crowd out the service's. `system`: with `SYSTEM_ACCOUNT`, which
    lends KX the watchdog's requests (the server's config must name it `system_account`)."""
    items = list(creds.values() if isinstance(creds, dict) else creds)
    users = {account: [c for c in items if account_of(c) == account] for account in (ACCOUNT, *ROLE_ACCOUNTS.values())}

    def rendered(account: str) -> str:
        return render_users(users[account], subjects, indent="      ", runtime_identity=runtime_identity)

    watchdog = list(WATCHDOG_SUBJECTS) if system else []
    lent = deliveries(items)
    links = {
        "exports": [
            *_exports(subjects, "      ", limits.response_threshold_s),
            *(
                f"      {{ stream: {_q(inbox)}, accounts: [{account}] }}"
                for account, xs in lent.items()
                for inbox in xs
            ),
        ],
        "imports": [_import(SYSTEM_ACCOUNT, subject) for subject in watchdog],
    }
    lines = _account(ACCOUNT, limits.render("    "), rendered(ACCOUNT), links, "  ")
    for role, account in ROLE_ACCOUNTS.items():
        imports = [_import(ACCOUNT, subject) for subject in role_imports(subjects, role)]
        imports += [f"      {{ stream: {{ account: {ACCOUNT}, subject: {_q(x)} }} }}" for x in lent.get(account, [])]
        lines += _account(account, limits.render_core("    "), rendered(account), {"imports": imports}, "  ")
    if system:
        lends = [f"      {{ service: {_q(subject)}, accounts: [{ACCOUNT}] }}" for subject in watchdog]
        lines += _account(SYSTEM_ACCOUNT, "", "", {"exports": lends}, "  ")
    return (
        f"# Konnaxion Releases (prefix {subjects.prefix!r}): one user per role, least privilege; the service's\n"
        f"# in {ACCOUNT} (JetStream's), every other role's in its own account that imports only what it uses,\n"
        "# each account with limits that bound what its users can make the server hold.\n"
        "# Generated by kxr; see docs/permissions.md.\n"
        "accounts {\n" + "\n".join(lines) + "\n}\n"
    )


def render_server_config(
    creds: dict[str, Credentials] | list[Credentials],
    subjects: Subjects,
    limits: AccountLimits = DEFAULT_LIMITS,
    runtime_identity: str = "shared",
) -> str:
    """A whole nats-server config for the embedded server: JetStream on (store dir, listen address
    and port come from the command line), the largest message, its system account, and
    `render_accounts`."""
    return (
        f"jetstream: {{}}\nmax_payload: {limits.max_payload}\nsystem_account: {SYSTEM_ACCOUNT}\n\n"
        + render_accounts(creds, subjects, limits, runtime_identity, system=True)
    )
