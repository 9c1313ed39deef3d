"""Server-wide actions: information, the audit log, and master-key rotation."""

from __future__ import annotations

from sqlalchemy import func, select

from cloudkeep import __version__
from cloudkeep.server import audit
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import (
    AuditEvent,
    BackupJob,
    Credential,
    DiscoveredMachine,
    JobSession,
    ProtectionGroup,
    Repository,
    RestorePoint,
    ServerSetting,
)
from cloudkeep.server.services.common import paginate
from cloudkeep.server.services.jobs import reseal_options
from cloudkeep.server.services.schemas import AuditView, KeyRotation, Page, ServerInfo

_COUNTED = {
    "credentials": Credential,
    "repositories": Repository,
    "protection_groups": ProtectionGroup,
    "machines": DiscoveredMachine,
    "jobs": BackupJob,
    "sessions": JobSession,
    "restore_points": RestorePoint,
}
_SEALED_SETTINGS = ("signing_key",)


def server_info(ctx: ServerContext) -> ServerInfo:
    with ctx.db() as session:
        counts = {
            name: session.scalar(select(func.count()).select_from(model)) or 0
            for name, model in _COUNTED.items()
        }
    return ServerInfo(
        server_id=ctx.server_id,
        version=__version__,
        database=ctx.engine.url.render_as_string(hide_password=True),
        public_key=ctx.public_key_b64,
        master_key_id=ctx.secrets.key_id,
        counts=counts,
    )


def list_audit(
    ctx: ServerContext,
    *,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[AuditView]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        stmt = stmt.where(AuditEvent.action.startswith(action))
    with ctx.db() as session:
        return paginate(session, stmt, AuditView.model_validate, limit, offset)


def rotate_master_key(ctx: ServerContext, *, actor: str = "local") -> KeyRotation:
    """Re-seal every secret under a fresh master key, then retire the old keys.

    Order makes it crash-safe: the new key is written to the key file (next to the old ones)
    before any value is re-sealed; all values are re-sealed in one transaction; old keys are
    dropped only after it commits. Other workers reload the key file when they meet the new id.
    """
    old = ctx.secrets.key_id
    new = ctx.secrets.rotate()
    count = 0
    with ctx.db() as session:
        for cred in session.scalars(select(Credential)):
            cred.secret = ctx.secrets.seal(ctx.secrets.open(cred.secret))
            count += 1
        for repo in session.scalars(select(Repository).where(Repository.password.is_not(None))):
            assert repo.password is not None
            repo.password = ctx.secrets.seal(ctx.secrets.open(repo.password))
            count += 1
        for job in session.scalars(select(BackupJob)):
            options, resealed = reseal_options(ctx, job.options or {})
            if resealed:
                job.options = options
                count += resealed
        for setting in session.scalars(select(ServerSetting).where(ServerSetting.key.in_(_SEALED_SETTINGS))):
            setting.value = ctx.secrets.seal(ctx.secrets.open(bytes.fromhex(setting.value))).hex()
            count += 1
        audit.record(session, actor, "server.rotate_key", new, {"old_key_id": old, "resealed": count})
    retired = ctx.secrets.retire_old_keys()
    return KeyRotation(old_key_ids=retired, new_key_id=new, resealed=count)
