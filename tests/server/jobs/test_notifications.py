"""Session notifications against real loopback peers: a tiny SMTP server and an HTTP webhook receiver.

The SMTP peer is a minimal stdlib socket server speaking just enough SMTP (EHLO/MAIL/RCPT/DATA/
QUIT) for ``smtplib``; the backup itself runs through the in-process FAKE dispatcher.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, make_context

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.jobs import start_job
from cloudkeep.server.jobs.notifications import validate_notifications


class SMTPHandler(socketserver.StreamRequestHandler):
    def _reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self) -> None:
        self._reply("220 loopback ESMTP")
        envelope: dict[str, Any] = {"rcpt": []}
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250 loopback")
            elif verb == "MAIL":
                envelope["from"] = command
                self._reply("250 OK")
            elif verb == "RCPT":
                envelope["rcpt"].append(command)
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with .")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                envelope["data"] = data
                self.server.messages.append(dict(envelope))  # type: ignore[attr-defined]
                self._reply("250 queued")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("250 OK")


@pytest.fixture
def smtp_server() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SMTPHandler)
    server.messages = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_server() -> Iterator[ThreadingHTTPServer]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"json": json.loads(body), "auth": self.headers.get("Authorization")})
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.received = received  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=2)


def stats_of(ctx: ServerContext, session_id: str) -> dict[str, Any]:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        return dict(session.stats)


def test_failure_sends_email_and_webhook(
    ctx: ServerContext, world: World, smtp_server: Any, webhook_server: Any
) -> None:
    notifications = {
        "on": ["failed", "warning"],
        "email": {
            "to": ["ops@example.com"],
            "from": "cloudkeep@example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_server.server_address[1],
        },
        "webhook": {
            "url": f"http://127.0.0.1:{webhook_server.server_address[1]}/hook",
            "headers": {"Authorization": "Bearer t0k"},
        },
    }
    job_id = world.add_job("nightly", options={"notifications": notifications})
    fake = FakeDispatcher(ctx, fail={world.machine_ids[1]: "storage unreachable: connection refused"})
    session_id = start_job(ctx, job_id, wait=True, dispatcher=fake)
    assert stats_of(ctx, session_id)["notifications"] == {"email": "sent", "webhook": "sent"}
    (mail,) = smtp_server.messages
    parsed = message_from_bytes(mail["data"])
    assert parsed["Subject"] == "[cloudkeep] nightly: WARNING (2 machine(s))"
    assert parsed["To"] == "ops@example.com" and "<ops@example.com>" in mail["rcpt"][0]
    text = parsed.get_payload(decode=True).decode()
    assert "vm-1: failed" in text and "storage unreachable: connection refused" in text
    (hook,) = webhook_server.received
    assert hook["auth"] == "Bearer t0k"
    assert hook["json"]["state"] == "warning" and hook["json"]["job"] == "nightly"
    assert {t["machine"]: t["state"] for t in hook["json"]["tasks"]} == {"vm-0": "success", "vm-1": "failed"}


def test_success_is_quiet_unless_asked(ctx: ServerContext, world: World, webhook_server: Any) -> None:
    url = f"http://127.0.0.1:{webhook_server.server_address[1]}/hook"
    quiet = world.add_job("quiet", options={"notifications": {"webhook": {"url": url}}})
    loud = world.add_job("loud", options={"notifications": {"on": ["success"], "webhook": {"url": url}}})
    fake = FakeDispatcher(ctx)
    start_job(ctx, quiet, wait=True, dispatcher=fake)
    assert webhook_server.received == []
    start_job(ctx, loud, wait=True, dispatcher=fake)
    assert [h["json"]["job"] for h in webhook_server.received] == ["loud"]


def test_unreachable_smtp_is_recorded_and_does_not_change_the_result(
    ctx: ServerContext, world: World
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifications = {
        "on": ["success"],
        "email": {"to": "ops@example.com", "smtp_host": "127.0.0.1", "smtp_port": port},
    }
    job_id = world.add_job(options={"notifications": notifications})
    session_id = start_job(ctx, job_id, wait=True, dispatcher=FakeDispatcher(ctx))
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None and session.state == "success"
    assert stats_of(ctx, session_id)["notifications"]["email"].startswith("failed:")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"on": ["sometimes"]}, "option notifications.on.0: Input should be 'success'"),
        ({"email": {"to": ["a@b"]}}, "option notifications.email.smtp_host: Field required"),
        ({"webhook": {"url": "ftp://x"}}, "option notifications.webhook.url: String should match"),
        ({"webhook": {"url": "https://x"}, "slack": {}}, "unknown option slack; known options: email, on"),
    ],
)
def test_validate_notifications(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_notifications(bad)
