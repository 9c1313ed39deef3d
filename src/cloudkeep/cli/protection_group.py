"""`cloudkeep protection-group …`: which cloud machines to protect, and rescans."""

from __future__ import annotations

from typing import Any

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    client,
    follow,
    parse_json,
    parse_pairs,
    print_json,
    render_object,
    render_page,
    success,
)
from cloudkeep.server.services.schemas import ProtectionGroupCreate, ProtectionGroupUpdate

app = typer.Typer(help="Protection groups of type cloud machines.", no_args_is_help=True)
COLUMNS = [
    ("name", "name"),
    ("machines", "machine_count"),
    ("regions", "regions"),
    ("tags", "include_tags"),
    ("enabled", "enabled"),
    ("last rescan", "last_rescan_at"),
    ("id", "id"),
]
REGION = typer.Option(None, "--region", help="Region / location / subscription (repeat).")
MACHINE = typer.Option(None, "--machine", help="Only these machine ids or names (repeat).")
TAG = typer.Option(None, "--tag", help="Include machines with tag KEY=VALUE (repeat; all must match).")
EXCLUDE = typer.Option(None, "--exclude-machine", help="Exclude machine id or name (repeat).")
EXCLUDE_TAG = typer.Option(None, "--exclude-tag", help="Exclude machines with tag KEY=VALUE (repeat).")
SCHEDULE = typer.Option(
    None, "--rescan-schedule", help='JSON, e.g. \'{"kind": "periodic", "every_hours": 6}\'.'
)


def _fields(
    region: list[str] | None,
    machine: list[str] | None,
    tag: list[str] | None,
    exclude_machine: list[str] | None,
    exclude_tag: list[str] | None,
    rescan_schedule: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "regions": region,
        "machine_ids": machine,
        "include_tags": parse_pairs(tag, "--tag") if tag else None,
        "exclude_ids": exclude_machine,
        "exclude_tags": parse_pairs(exclude_tag, "--exclude-tag") if exclude_tag else None,
        "rescan_schedule": parse_json(rescan_schedule, "rescan-schedule"),
    }
    return {k: v for k, v in fields.items() if v is not None}


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name."),
    credential: str = typer.Option(..., "--credential", help="Credential id or name."),
    distribution_repository: str = typer.Option(..., "--distribution-repository", help="Id or name."),
    region: list[str] | None = REGION,
    machine: list[str] | None = MACHINE,
    tag: list[str] | None = TAG,
    exclude_machine: list[str] | None = EXCLUDE,
    exclude_tag: list[str] | None = EXCLUDE_TAG,
    rescan_schedule: str | None = SCHEDULE,
    on_disappear: str = typer.Option("keep", "--on-disappear", help="keep | unmanage"),
    auto_update: bool = typer.Option(True, "--auto-update/--no-auto-update"),
    install_python: bool = typer.Option(
        False,
        "--install-python/--no-install-python",
        help="Let the installer add Python with the OS package manager where none ≥ 3.9 is found.",
    ),
    description: str = typer.Option("", "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a protection group (all machines of the account unless --machine/--tag narrow it)."""
    data = ProtectionGroupCreate(
        name=name,
        credential=credential,
        distribution_repository=distribution_repository,
        on_disappear=on_disappear,  # type: ignore[arg-type]
        auto_update=auto_update,
        install_python=install_python,
        description=description,
        **_fields(region, machine, tag, exclude_machine, exclude_tag, rescan_schedule),
    )
    with client(ctx) as c:
        view = c.create_group(data)
    if as_json:
        print_json(view)
    else:
        success(
            f"protection group {view.name} created ({view.id}); next: `cloudkeep protection-group rescan`"
        )


@app.command("update")
def update(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    name: str | None = typer.Option(None, "--name", help="Rename."),
    distribution_repository: str | None = typer.Option(None, "--distribution-repository"),
    region: list[str] | None = REGION,
    machine: list[str] | None = MACHINE,
    tag: list[str] | None = TAG,
    exclude_machine: list[str] | None = EXCLUDE,
    exclude_tag: list[str] | None = EXCLUDE_TAG,
    rescan_schedule: str | None = SCHEDULE,
    on_disappear: str | None = typer.Option(None, "--on-disappear", help="keep | unmanage"),
    enabled: bool | None = typer.Option(None, "--enable/--disable"),
    install_python: bool | None = typer.Option(None, "--install-python/--no-install-python"),
    description: str | None = typer.Option(None, "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a protection group; only the options given change."""
    fields = _fields(region, machine, tag, exclude_machine, exclude_tag, rescan_schedule)
    extra = {
        "name": name,
        "distribution_repository": distribution_repository,
        "on_disappear": on_disappear,
        "enabled": enabled,
        "install_python": install_python,
        "description": description,
    }
    fields.update({k: v for k, v in extra.items() if v is not None})
    with client(ctx) as c:
        view = c.update_group(ref, ProtectionGroupUpdate(**fields))
    if as_json:
        print_json(view)
    else:
        success(f"protection group {view.name} updated")


@app.command("list")
def list_(
    ctx: typer.Context, as_json: bool = JSON_OPTION, limit: int = LIMIT_OPTION, offset: int = OFFSET_OPTION
) -> None:
    """List protection groups."""
    with client(ctx) as c:
        render_page(c.list_groups(limit=limit, offset=offset), as_json, COLUMNS, title="Protection groups")


@app.command("show")
def show(
    ctx: typer.Context, ref: str = typer.Argument(..., help="Id or name."), as_json: bool = JSON_OPTION
) -> None:
    """Show one protection group."""
    with client(ctx) as c:
        render_object(c.get_group(ref), as_json, title="Protection group")


@app.command("delete")
def delete(ctx: typer.Context, ref: str = typer.Argument(..., help="Id or name.")) -> None:
    """Delete a protection group that no job uses."""
    with client(ctx) as c:
        c.delete_group(ref)
    success(f"protection group {ref} deleted")


@app.command("rescan")
def rescan(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    machine: list[str] | None = typer.Option(None, "--machine", help="Only these machines (repeat)."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Watch until it ends (always in embedded mode)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Discover the group's machines and deploy the agent where possible."""
    with client(ctx) as c:
        follow(c, c.rescan(ref, machines=machine), wait=wait, as_json=as_json)
