"""`cloudkeep protection-group …`: which cloud machines to protect, and rescans."""

from __future__ import annotations

from typing import Any

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    Col,
    Column,
    client,
    follow,
    parse_json,
    parse_pairs,
    print_json,
    success,
)
from cloudkeep.cli.completion import ON_DISAPPEAR, choices, names_of
from cloudkeep.cli.resource import Resource, add_resource_commands
from cloudkeep.server.services.schemas import ProtectionGroupCreate, ProtectionGroupUpdate

app = typer.Typer(help="Protection groups of type cloud machines.", no_args_is_help=True)
COLUMNS: list[Column] = [
    ("name", "name"),
    ("machines", "machine_count"),
    ("regions", "regions"),
    ("tags", "include_tags"),
    ("enabled", "enabled"),
    ("last rescan", "last_rescan_at"),
    Col("id", "id", wide=True),
]
REGION = typer.Option(None, "--region", help="Region / location / subscription (repeat).")
MACHINE = typer.Option(
    None, "--machine", help="Only these machine ids or names (repeat).", autocompletion=names_of("machine")
)
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
    credential: str = typer.Option(
        ..., "--credential", help="Credential id or name.", autocompletion=names_of("credential")
    ),
    distribution_repository: str = typer.Option(
        ..., "--distribution-repository", help="Id or name.", autocompletion=names_of("repository")
    ),
    region: list[str] | None = REGION,
    machine: list[str] | None = MACHINE,
    tag: list[str] | None = TAG,
    exclude_machine: list[str] | None = EXCLUDE,
    exclude_tag: list[str] | None = EXCLUDE_TAG,
    rescan_schedule: str | None = SCHEDULE,
    on_disappear: str = typer.Option(
        "keep", "--on-disappear", help="keep | unmanage", autocompletion=choices(*ON_DISAPPEAR)
    ),
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
            f"protection group {view.name} created ({view.id[:8]}); next: `cloudkeep protection-group rescan`"
        )


@app.command("update")
def update(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("group")),
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


@app.command("rescan")
def rescan(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("group")),
    machine: list[str] | None = typer.Option(None, "--machine", help="Only these machines (repeat)."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Watch until it ends (always in embedded mode)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Discover the group's machines and deploy the agent where possible."""
    with client(ctx) as c:
        follow(c, c.rescan(ref, machines=machine), wait=wait, as_json=as_json)


add_resource_commands(
    app,
    Resource(
        noun="protection group",
        title="Protection groups",
        columns=COLUMNS,
        get=lambda c, ref: c.get_group(ref),
        list_page=lambda c, **page: c.list_groups(**page),
        delete=lambda c, ref: c.delete_group(ref),
        delete_help="Delete a protection group that no job uses.",
        kind="group",
    ),
)
