"""`cloudkeep restore …`: files and volumes back to machines, or files down to this computer."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.cli.common import client, follow, print_json, success
from cloudkeep.server.services.schemas import FileRestoreRequest, VolumeRestoreRequest

app = typer.Typer(help="Restores.", no_args_is_help=True)
WAIT = typer.Option(True, "--wait/--no-wait", help="Watch until it ends (always in embedded mode).")


@app.command("files")
def files(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="Restore point id or snapshot id."),
    path: list[str] | None = typer.Option(
        None, "--path", help="Path to restore (repeat; default: everything)."
    ),
    target_machine: str | None = typer.Option(
        None, "--target-machine", help="Default: the original machine."
    ),
    target_path: str | None = typer.Option(None, "--target-path", help="Folder to restore into."),
    in_place: bool = typer.Option(False, "--in-place", help="Overwrite the original files."),
    wait: bool = WAIT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Restore files from a restore point to a machine."""
    request = FileRestoreRequest(
        paths=path or None, target_machine=target_machine, target_path=target_path, in_place=in_place
    )
    with client(ctx) as c:
        follow(c, c.restore_files(restore_point, request), wait=wait, as_json=as_json)


@app.command("volume")
def volume(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="Restore point id or snapshot id."),
    target_path: str = typer.Option(..., "--target-path", help="Device or image file to write."),
    target_machine: str | None = typer.Option(
        None, "--target-machine", help="Default: the original machine."
    ),
    wait: bool = WAIT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Restore a volume image from a restore point."""
    request = VolumeRestoreRequest(target_path=target_path, target_machine=target_machine)
    with client(ctx) as c:
        follow(c, c.restore_volume(restore_point, request), wait=wait, as_json=as_json)


@app.command("download")
def download(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="Restore point id or snapshot id."),
    path: list[str] = typer.Option(..., "--path", help="Path to download (repeat)."),
    dest: Path = typer.Option(Path("."), "--dest", help="Local folder to write into."),
) -> None:
    """Download files from a restore point to this computer."""
    with client(ctx) as c:
        c.download(restore_point, path, dest)
    success(f"downloaded {len(path)} path(s) into {dest}")


@app.command("export")
def export(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="A volume restore point."),
    dest: Path = typer.Option(..., "--dest", help="Image file to write."),
    image_format: str = typer.Option("raw", "--format", help="raw | vhd (for EC2 import / Azure disks)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Export a volume restore point as a disk image on this computer (streamed from the server)."""
    with client(ctx) as c:
        result = c.export_image(restore_point, dest, image_format=image_format)
    if as_json:
        print_json(result)
    else:
        success(f"wrote {dest} ({image_format})")
