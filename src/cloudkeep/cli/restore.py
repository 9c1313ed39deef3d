"""`cloudkeep restore …`: files and volumes back to machines, or files down to this computer."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.cli.common import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    YES_OPTION,
    Names,
    client,
    confirm,
    done,
    follow,
    print_json,
    success,
)
from cloudkeep.cli.completion import IMAGE_FORMATS, choices, names_of
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
        None, "--target-machine", help="Default: the original machine.", autocompletion=names_of("machine")
    ),
    target_path: str | None = typer.Option(None, "--target-path", help="Folder to restore into."),
    in_place: bool = typer.Option(False, "--in-place", help="Overwrite the original files."),
    yes: bool = YES_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    wait: bool = WAIT,
    as_json: bool = JSON_OPTION,
) -> None:
    """Restore files from a restore point to a machine.

    Restoring to the original location (--in-place) overwrites live files: it asks first
    (--yes to skip; without a terminal --yes is required) and --dry-run says what it would do.
    """
    request = FileRestoreRequest(
        paths=path or None, target_machine=target_machine, target_path=target_path, in_place=in_place
    )
    with client(ctx) as c:
        if in_place or dry_run:
            point = c.get_restore_point(restore_point)  # a bad id fails here, before any question
            machine = target_machine or Names(c).name("machine", point.machine_id)
            what = ", ".join(path) if path else "every file"
            where = f"into {target_path or 'the default folder'} on {machine}"
            if in_place:
                where = f"in place on {machine}"
            if dry_run:
                done(
                    f"would restore {what} from restore point {point.id[:8]} {where}; nothing changed",
                    as_json,
                    dry_run=True,
                    restore_point_id=point.id,
                    paths=path or [],
                    target_machine=machine,
                    in_place=in_place,
                )
                return
            confirm(f"Overwrite {what} {where} with restore point {point.id[:8]}?", yes=yes)
        follow(c, c.restore_files(restore_point, request), wait=wait, as_json=as_json)


@app.command("volume")
def volume(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="Restore point id or snapshot id."),
    target_path: str = typer.Option(..., "--target-path", help="Device or image file to write."),
    target_machine: str | None = typer.Option(
        None, "--target-machine", help="Default: the original machine.", autocompletion=names_of("machine")
    ),
    wait: bool = WAIT,
    as_json: bool = JSON_OPTION,
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
    as_json: bool = JSON_OPTION,
) -> None:
    """Download files from a restore point to this computer."""
    with client(ctx) as c:
        c.download(restore_point, path, dest)
    done(f"downloaded {len(path)} path(s) into {dest}", as_json, paths=path, dest=str(dest))


@app.command("export")
def export(
    ctx: typer.Context,
    restore_point: str = typer.Argument(..., help="A volume restore point."),
    dest: Path = typer.Option(..., "--dest", help="Image file to write."),
    image_format: str = typer.Option(
        "raw",
        "--format",
        help="raw | vhd (for EC2 import / Azure disks).",
        autocompletion=choices(*IMAGE_FORMATS),
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Export a volume restore point as a disk image on this computer (streamed from the server)."""
    with client(ctx) as c:
        result = c.export_image(restore_point, dest, image_format=image_format)
    if as_json:
        print_json(result)
    else:
        success(f"wrote {dest} ({image_format})")
