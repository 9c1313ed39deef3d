"""``python -m cloudkeep.machine <command> --config $ROOT/etc/cloudkeep/machine.json``.

Commands: ``keygen`` (create keys if missing; print the public keys as JSON), ``message-service``,
``agent``, ``transport`` (daemons), ``exec --message <b64>`` (fallback path: prints the signed
result envelope as the last stdout line), ``status``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.machine.config import MachineConfig
from cloudkeep.protocol import ProtocolError


def _logging() -> None:
    """Log to stderr only: the installer sends a daemon's stderr to the journal (systemd) or to
    ``var/log/cloudkeep/<service>.log`` (fallback), so each line is written exactly once."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(sys.stderr)],
        force=True,
    )


def _keygen(config_path: Path) -> int:
    data = json.loads(config_path.read_text()) if config_path.exists() else {}
    root = (
        config_path.resolve().parents[2]
        if config_path.parts[-3:] == ("etc", "cloudkeep", "machine.json")
        else None
    )
    state = Path(data.get("state_dir") or (root or config_path.parent) / "var/lib/cloudkeep")
    from cloudkeep.machine.keys import AgentKeys

    print(json.dumps(AgentKeys.load_or_create(state).public()))
    return 0


def _temp_under_state(config: MachineConfig) -> None:
    """Temporary files (staged packs of up to the pack size) go under the state folder: ``/tmp``
    is often a RAM-backed tmpfs on small VMs, and the state folder is known to be writable."""
    folder = config.state_dir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)


def _daemon(config: MachineConfig, service: str) -> int:
    # Each service imports only its own modules: an idle agent never loads the message service's.
    _temp_under_state(config)
    runner: Any
    if service == "message-service":
        from cloudkeep.machine.message_service import MessageService

        runner = MessageService(config)
    elif service == "agent":
        from cloudkeep.machine.agent import agent

        runner = agent(config)
    else:
        from cloudkeep.machine.transport import transport

        runner = transport(config)

    def request_stop(*_: object) -> None:
        # Never take a lock inside a signal handler: a second SIGTERM arriving while the first
        # handler is inside Event.set() would wait on a lock its own thread holds, forever.
        threading.Thread(target=runner.stop, name="ck-stop", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    runner.run()
    return 0


def _exec(config: MachineConfig, message_b64: str) -> int:
    from cloudkeep.machine.exec import exec_command

    _temp_under_state(config)

    try:
        text = base64.b64decode(message_b64, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        print(f"error: --message is not base64 of a message: {exc}", file=sys.stderr)
        return 2
    try:
        print(exec_command(config, text), flush=True)
    except ProtocolError as exc:
        print(f"error: message rejected ({exc.reason}): {exc}", file=sys.stderr)
        return 3
    return 0


def _status(config: MachineConfig) -> int:
    from cloudkeep.machine.ledger import CommandLedger
    from cloudkeep.machine.services import service_status

    status = {
        "machine_id": config.machine_id,
        "server_id": config.server_id,
        "version": config.version(),
        "keys": (config.state_dir / "agent.key").exists(),
        "services": service_status(config.state_dir),
        "commands": CommandLedger(config.state_dir / "commands.db").counts(),
    }
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudkeep.machine")
    parser.add_argument(
        "command", choices=["keygen", "message-service", "agent", "transport", "exec", "status"]
    )
    parser.add_argument("--config", required=True, type=Path, help="$ROOT/etc/cloudkeep/machine.json")
    parser.add_argument("--message", help="exec: the signed command envelope, base64")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            return _keygen(args.config)
        config = MachineConfig.load(args.config)
        daemon = args.command in ("message-service", "agent", "transport")
        _logging()
        if daemon:
            return _daemon(config, args.command)
        if args.command == "exec":
            if not args.message:
                parser.error("exec needs --message")
            return _exec(config, args.message)
        return _status(config)
    except CloudkeepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from cloudkeep.exiting import skip_exit_collection
    from cloudkeep.heap import limit_heap_fragmentation

    limit_heap_fragmentation()  # before the daemons' threads: backups run on them
    code = main()
    skip_exit_collection()
    raise SystemExit(code)
