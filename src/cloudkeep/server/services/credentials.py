"""Cloud credentials: stored sealed with the master key, tested against the cloud, never shown."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloudkeep.errors import CloudkeepError, ConflictError, UnreachableError
from cloudkeep.providers.base import InventoryScope
from cloudkeep.server import audit
from cloudkeep.server.audit import is_secret_key
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import Credential, ProtectionGroup, Repository
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.schemas import CredentialCreate, CredentialTest, CredentialView, Page

_MACHINES_SEEN_LIMIT = 1000


def view(row: Credential) -> CredentialView:
    return CredentialView.model_validate(row)


def create_credential(ctx: ServerContext, data: CredentialCreate, *, actor: str = "local") -> CredentialView:
    """Store a credential; secret-looking keys given as options are moved into the sealed part."""
    secret = {k: v.get_secret_value() for k, v in data.secret.items()}
    options: dict[str, Any] = {}
    for key, value in data.options.items():
        if is_secret_key(key):
            secret[key] = value
        else:
            options[key] = value
    with ctx.db() as session:
        ensure_unique_name(session, Credential, data.name, "credential")
        row = Credential(
            name=data.name,
            provider=data.provider,
            secret=ctx.secrets.seal(secret),
            options=options,
            description=data.description,
        )
        session.add(row)
        session.flush()
        audit.record(
            session, actor, "credential.create", row.id, {"name": row.name, "provider": row.provider}
        )
        return view(row)


def list_credentials(ctx: ServerContext, *, limit: int = 100, offset: int = 0) -> Page[CredentialView]:
    with ctx.db() as session:
        return paginate(session, select(Credential).order_by(Credential.name), view, limit, offset)


def get_credential(ctx: ServerContext, ref: str) -> CredentialView:
    with ctx.db() as session:
        return view(resolve(session, Credential, ref, "credential"))


def delete_credential(ctx: ServerContext, ref: str, *, actor: str = "local") -> None:
    with ctx.db() as session:
        row = resolve(session, Credential, ref, "credential")
        users = [
            r.name for r in session.scalars(select(Repository).where(Repository.credential_id == row.id))
        ]
        users += [
            g.name
            for g in session.scalars(select(ProtectionGroup).where(ProtectionGroup.credential_id == row.id))
        ]
        if users:
            raise ConflictError(
                f"credential {row.name!r} is still used by {', '.join(sorted(users))}",
                hint="remove or change those repositories and protection groups first",
            )
        session.delete(row)
        audit.record(session, actor, "credential.delete", row.id, {"name": row.name})


CONNECTION_HINT = (
    "check the endpoint (URL, region), that this server resolves its name (DNS) and reaches it "
    "(firewall, HTTPS_PROXY / NO_PROXY)"
)


def _failed(cred: CredentialView, exc: CloudkeepError, **found: Any) -> CredentialTest:
    """A test that could not finish: the reason, and a hint that fits it (never "grant permissions"
    for a network or configuration problem)."""
    hint: str | None
    if isinstance(exc, UnreachableError):
        hint = f"{exc.hint}; {CONNECTION_HINT}" if exc.hint else CONNECTION_HINT
    else:
        hint = exc.hint
    return CredentialTest(
        credential_id=cred.id, name=cred.name, ok=False, missing_permissions=found.get("missing", []),
        machines_seen=found.get("seen"), problems=found.get("problems", []), error=str(exc), hint=hint,
    )  # fmt: skip


def _manages_machines(ctx: ServerContext, credential_id: str) -> bool:
    """Used by a protection group, or not yet used at all: its machine-side options matter. A
    credential only behind repositories (e.g. an S3-compatible store) never runs commands."""
    with ctx.db() as session:
        groups = session.scalar(
            select(ProtectionGroup.id).where(ProtectionGroup.credential_id == credential_id).limit(1)
        )
        repos = session.scalar(
            select(Repository.id).where(Repository.credential_id == credential_id).limit(1)
        )
    return groups is not None or repos is None


def test_credential(ctx: ServerContext, ref: str) -> CredentialTest:
    """Dry-run the documented permissions and list machines, reporting rather than raising."""
    cred = get_credential(ctx, ref)
    missing: list[str] = []
    problems: list[str] = []
    seen: int | None = None
    try:
        provider = ctx.provider_for(cred.id)
    except CloudkeepError as exc:
        return _failed(cred, exc)
    try:
        if _manages_machines(ctx, cred.id):
            problems = list(provider.check_configuration())
        missing = list(provider.check_permissions())
        regions = tuple(cred.options.get("regions") or ())
        seen = 0
        for _machine in provider.inventory.list_machines(InventoryScope(regions=regions)):
            seen += 1
            if seen >= _MACHINES_SEEN_LIMIT:
                break
    except CloudkeepError as exc:
        return _failed(cred, exc, missing=missing, problems=problems, seen=seen)
    except Exception as exc:  # doctor reports every credential; an SDK surprise is one line, not a traceback
        error = CloudkeepError(f"unexpected {type(exc).__name__} while testing: {exc}")
        return _failed(cred, error, missing=missing, problems=problems, seen=seen)
    finally:
        provider.close()
    return CredentialTest(
        credential_id=cred.id,
        name=cred.name,
        ok=not missing and not problems,
        missing_permissions=missing,
        machines_seen=seen,
        problems=problems,
        hint="grant the missing permissions listed in docs/permissions.md" if missing else None,
    )


def doctor(ctx: ServerContext, credential: str | None = None) -> list[CredentialTest]:
    """Test one credential, or every stored one, against the documented permissions."""
    if credential is not None:
        return [test_credential(ctx, credential)]
    with ctx.db() as session:
        ids = list(session.scalars(select(Credential.id).order_by(Credential.name)))
    return [test_credential(ctx, cid) for cid in ids]
