"""``EmbeddedClient``: the ``Client`` interface over the service layer, without a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from cloudkeep.config import Settings
from cloudkeep.server import ops
from cloudkeep.server.client import Client
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.services import operations, sessions
from cloudkeep.server.services.schemas import SessionDetail

R = TypeVar("R")


class EmbeddedClient(Client):
    """Runs every action in this process on ``ctx``; long operations run on daemon threads here,
    so a caller must watch a started session until it ends before exiting."""

    embedded = True

    def __init__(self, ctx: ServerContext, *, actor: str = "local", owns_context: bool = False) -> None:
        self.ctx = ctx
        self.actor = actor
        self._owns = owns_context

    @classmethod
    def open(cls, settings: Settings) -> EmbeddedClient:
        return cls(open_context(settings), owns_context=True)

    def close(self) -> None:
        if self._owns:
            self.ctx.close()

    def call(self, op: ops.Op[R], /, **args: Any) -> R:
        """The op's service, called here as the route would call it."""
        service = ops.service_of(op)
        if op.audited:
            args["actor"] = self.actor
        result: R = service(self.ctx, **args)
        return result

    def watch_session(
        self, session_id: str, *, poll: float = 0.5, timeout: float = 86400
    ) -> Iterator[SessionDetail]:
        return sessions.watch_session(self.ctx, session_id, poll=poll, timeout=timeout)

    def download(self, ref: str, paths: list[str], dest: Path) -> None:
        operations.download_files(self.ctx, ref, paths, dest, actor=self.actor)

    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]:
        return operations.export_image(self.ctx, ref, dest, image_format=image_format, actor=self.actor)
