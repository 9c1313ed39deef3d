"""Cloud credentials: stored sealed with the master key, tested against the cloud, never shown."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloudkeep.errors import CloudkeepError, ConfigurationError, ConflictError, UnreachableError
from cloudkeep.providers.base import InventoryScope
from cloudkeep.providers.registry import get_provider
from cloudkeep.server import audit
from cloudkeep.server.audit import is_secret_key
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import Credential, ProtectionGroup, Repository
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.schemas import (
    CredentialCreate,
    CredentialTest,
    CredentialUpdate,
    CredentialView,
    Page,
)

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


def _split_secret(secret: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Secret-looking keys given as options belong in the sealed part."""
    plain = {k: v for k, v in options.items() if not is_secret_key(k)}
    return {**secret, **{k: v for k, v in options.items() if is_secret_key(k)}}, plain


def _validate_material(provider_kind: str, secret: dict[str, Any], options: dict[str, Any]) -> None:
    """Refuse key material the cloud does not accept, before it replaces what works."""
    try:
        provider = get_provider(provider_kind, secret, options)
    except (CloudkeepError, OSError) as exc:  # OSError: a local lab folder that cannot be made
        raise ConfigurationError(
            f"the new credential material was refused: {exc}", hint="nothing was changed"
        ) from exc
    try:
        missing = list(provider.check_permissions())
    except (CloudkeepError, OSError) as exc:  # a folder that cannot be made is the local "refusal"
        raise ConfigurationError(
            f"the new credential material was refused: {exc}", hint="nothing was changed"
        ) from exc
    finally:
        provider.close()
    if missing:
        raise ConfigurationError(
            f"the new credential material lacks permissions: {', '.join(missing)}",
            hint="grant them at the cloud and try again; nothing was changed",
        )


def update_credential(
    ctx: ServerContext, ref: str, data: CredentialUpdate, *, actor: str = "local"
) -> CredentialView:
    """Replace the keys/secret (checked against the cloud first), options or description in place,
    so repositories and groups using the credential keep working with the new material."""
    with ctx.db() as session:
        row = resolve(session, Credential, ref, "credential")
        kind, row_id = row.provider, row.id
        secret = ctx.secrets.open(row.secret)
        options = dict(row.options)
    changed = sorted(data.model_fields_set)
    if data.secret is not None:  # the fields given replace theirs; an empty value removes one
        secret.update({k: v.get_secret_value() for k, v in data.secret.items()})
        secret = {k: v for k, v in secret.items() if v not in ("", None)}
    if data.options is not None:
        secret, options = _split_secret(secret, data.options)
    if data.secret is not None or data.options is not None:
        _validate_material(kind, secret, options)
    with ctx.db() as session:
        row = resolve(session, Credential, row_id, "credential")
        row.secret = ctx.secrets.seal(secret)
        row.options = options
        if data.description is not None:
            row.description = data.description
        audit.record(session, actor, "credential.update", row.id, {"name": row.name, "changed": changed})
        return view(row)


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
