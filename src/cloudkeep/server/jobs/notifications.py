"""Session notifications: email over SMTP and a JSON webhook, per the job's options.

``BackupJob.options["notifications"]``::

    {"on": ["failed", "warning"],            # session states that notify (default: failed, warning)
     "email": {"to": ["ops@example.com"], "from": "cloudkeep@example.com",
               "smtp_host": "smtp.example.com", "smtp_port": 587, "starttls": true,
               "username": "…", "password_sealed": "<hex of ctx.secrets.seal(password)>"},
     "webhook": {"url": "https://hooks.example.com/…", "headers": {"Authorization": "…"}}}

A delivery failure never changes the session's result; it is recorded in
``JobSession.stats["notifications"]`` so the administrator can see it.
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from typing import Any

import httpx
from pydantic import ValidationError

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, DiscoveredMachine, JobSession
from cloudkeep.server.jobs.options import (
    EmailOptions,
    NotificationOptions,
    WebhookOptions,
    describe,
    read_job_options,
)

log = logging.getLogger(__name__)
DEFAULT_ON = ("failed", "warning")


def validate_notifications(spec: dict[str, Any] | None) -> NotificationOptions:
    """Check a job's notification options; a mistake is a ConfigurationError naming the field."""
    try:
        return NotificationOptions.model_validate(spec or {})
    except ValidationError as exc:
        raise ConfigurationError(describe(exc, "option notifications.")) from None


def session_summary(ctx: ServerContext, session_id: str) -> dict[str, Any]:
    """The JSON a webhook receives (and the email renders): the session and one line per machine."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is None:
            return {}
        job = db.get(BackupJob, session.job_id) if session.job_id else None
        tasks = []
        for task in session.tasks:
            machine = db.get(DiscoveredMachine, task.machine_id)
            tasks.append(
                {
                    "machine_id": task.machine_id,
                    "machine": machine.name if machine else task.machine_id,
                    "state": task.state,
                    "reason": task.reason,
                    "bytes_read": task.bytes_read,
                    "bytes_transferred": task.bytes_transferred,
                    "stats": task.stats or {},
                }
            )
        return {
            "event": "session.ended",
            "session_id": session.id,
            "kind": session.kind,
            "job_id": session.job_id,
            "job": job.name if job else None,
            "state": session.state,
            "reason": session.reason,
            "trigger": session.trigger,
            "attempt": session.attempt,
            "started_at": session.started_at.isoformat() if session.started_at else None,
            "ended_at": session.ended_at.isoformat() if session.ended_at else None,
            "stats": session.stats or {},
            "tasks": tasks,
        }


def render_email(summary: dict[str, Any], sender: str, to: list[str]) -> EmailMessage:
    message = EmailMessage()
    machines = len(summary["tasks"])
    message["Subject"] = f"[cloudkeep] {summary['job']}: {summary['state'].upper()} ({machines} machine(s))"
    message["From"] = sender
    message["To"] = ", ".join(to)
    lines = [
        f"Job: {summary['job']}",
        f"Result: {summary['state']} — {summary['reason']}",
        f"Started: {summary['started_at']}  Ended: {summary['ended_at']}  Trigger: {summary['trigger']}",
        "",
    ]
    for task in summary["tasks"]:
        read, sent = task["bytes_read"], task["bytes_transferred"]
        lines.append(f"- {task['machine']}: {task['state']}  read {read} B  sent {sent} B")
        if task["reason"]:
            lines.append(f"    {task['reason']}")
    lines += ["", f"Session {summary['session_id']}: `cloudkeep session show {summary['session_id']}`"]
    message.set_content("\n".join(lines))
    return message


def send_email(ctx: ServerContext, email: EmailOptions, summary: dict[str, Any]) -> None:
    message = render_email(summary, email.sender or "cloudkeep@localhost", email.to)
    timeout = email.timeout or 30.0
    with smtplib.SMTP(email.smtp_host, email.smtp_port or 25, timeout=timeout) as smtp:
        if email.starttls:
            smtp.starttls()
        if email.username:
            if not email.password_sealed:
                raise smtplib.SMTPAuthenticationError(0, b"no password stored for the SMTP username")
            password = ctx.secrets.open(bytes.fromhex(email.password_sealed))
            smtp.login(email.username, str(password))
        smtp.send_message(message)


def send_webhook(hook: WebhookOptions, summary: dict[str, Any]) -> None:
    response = httpx.post(hook.url, json=summary, headers=hook.headers or {}, timeout=hook.timeout or 15.0)
    response.raise_for_status()


def notify_session(ctx: ServerContext, session_id: str) -> dict[str, str]:
    """Deliver the ended session's notifications; returns (and records) channel → "sent" or the error."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        job = db.get(BackupJob, session.job_id) if session and session.job_id else None
        if session is None or job is None:
            return {}
        spec = read_job_options(job.name, job.options).notifications
        state = session.state
    if spec is None or not (spec.email or spec.webhook):
        return {}
    if state not in (spec.on if spec.on is not None else DEFAULT_ON):
        return {}
    summary = session_summary(ctx, session_id)
    outcome: dict[str, str] = {}
    if spec.email:
        try:
            send_email(ctx, spec.email, summary)
            outcome["email"] = "sent"
        except (OSError, smtplib.SMTPException) as exc:
            outcome["email"] = f"failed: {exc}"
    if spec.webhook:
        try:
            send_webhook(spec.webhook, summary)
            outcome["webhook"] = "sent"
        except httpx.HTTPError as exc:
            outcome["webhook"] = f"failed: {exc}"
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is not None:
            session.stats = {**(session.stats or {}), "notifications": outcome}
    for channel, result in outcome.items():
        if result != "sent":
            log.warning("session %s: %s notification %s", session_id, channel, result)
    return outcome
