"""`cloudkeep credential …`: cloud credentials (stored encrypted, never printed)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import typer
from pydantic import SecretStr

from cloudkeep.cli.common import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    YES_OPTION,
    Col,
    Column,
    client,
    confirm,
    console,
    parse_pairs,
    print_json,
    print_table,
    success,
)
from cloudkeep.cli.completion import PROVIDERS, choices, names_of
from cloudkeep.cli.resource import Resource, add_resource_commands
from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.facts import CredentialField
from cloudkeep.providers.registry import all_provider_facts, provider_facts, provider_kinds
from cloudkeep.server.services.schemas import CredentialCreate, CredentialTest, CredentialUpdate

app = typer.Typer(help="Cloud credentials.", no_args_is_help=True)

COLUMNS: list[Column] = [
    ("name", "name"),
    ("provider", "provider"),
    ("options", "options"),
    ("created", "created_at"),
    Col("id", "id", wide=True),
]


def _fields() -> list[CredentialField]:
    """Every provider's credential fields, once per key (the CLI offers the union of them)."""
    seen: dict[str, CredentialField] = {}
    for facts in all_provider_facts():
        for field in facts.credential_fields:
            seen.setdefault(field.key, field)
    return list(seen.values())


def _secrets(provider: str, given: dict[str, str], from_env: bool, prompt: bool) -> dict[str, SecretStr]:
    values = dict(given)
    fields = provider_facts(provider).credential_fields
    if from_env:
        for field in fields:
            if field.env and os.environ.get(field.env) and field.key not in values and not field.in_options:
                values[field.key] = os.environ[field.env]
    if prompt:
        for field in fields:
            if field.prompt_after and values.get(field.prompt_after) and field.key not in values:
                values[field.key] = typer.prompt(field.key, hide_input=True)
    return {k: SecretStr(v) for k, v in values.items() if v}


def _env_names() -> str:
    return ", ".join(field.env for field in _fields() if field.env)


def _one_of(kinds: tuple[str, ...]) -> str:
    return f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)


def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name."),
    provider: str = typer.Option(
        ..., "--provider", help=" | ".join(provider_kinds()), autocompletion=choices(*PROVIDERS)
    ),
    secret: list[str] | None = typer.Option(
        None,
        "--secret",
        help="KEY: prompt (hidden) for a secret field; KEY=VALUE is accepted but lands in history.",
    ),
    from_env: bool = typer.Option(
        False,
        "--from-env",
        help=f"Read {_env_names()} for the secret.",
    ),
    option: list[str] | None = typer.Option(
        None, "--option", help="Non-secret KEY=VALUE (endpoint_url, region …)."
    ),
    region: list[str] | None = typer.Option(None, "--region", help="Default region(s) to look in."),
    description: str = typer.Option("", "--description"),
    no_prompt: bool = typer.Option(False, "--no-prompt", help="Never prompt (fail instead)."),
    as_json: bool = JSON_OPTION,
    **fields: str | None,
) -> None:
    """Add a credential; secrets come from --from-env or a hidden prompt and are never echoed."""
    if provider not in provider_kinds():
        raise ConfigurationError(f"unknown provider {provider!r}", hint=f"use {_one_of(provider_kinds())}")
    given: dict[str, str] = {}
    for item in secret or []:
        key, sep, value = item.partition("=")
        given[key] = value if sep else typer.prompt(key, hide_input=True)
    options: dict[str, Any] = dict(parse_pairs(option, "--option"))
    if region:
        options["regions"] = list(region)
    for field in _fields():
        if given_value := fields.get(field.key):
            (options if field.in_options else given)[field.key] = given_value
    data = CredentialCreate(
        name=name,
        provider=provider,
        secret=_secrets(provider, given, from_env, not no_prompt),
        options=options,
        description=description,
    )
    with client(ctx) as c:
        view = c.create_credential(data)
    if as_json:
        print_json(view)
    else:
        success(f"credential {view.name} added ({view.id[:8]})")


def _with_field_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per non-secret credential field in place of its ``**fields``."""
    signature = inspect.signature(command)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    declared = [
        inspect.Parameter(
            field.key,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, field.option, help=field.help),
            annotation=str | None,
        )
        for field in _fields()
        if not field.secret
    ]
    clash = {p.name for p in fixed} & {p.name for p in declared}
    if clash:  # a provider's field would shadow one of the command's own options
        raise TypeError(f"credential fields clash with options of `credential add`: {sorted(clash)}")
    command.__signature__ = signature.replace(parameters=[*fixed, *declared])  # type: ignore[attr-defined]
    return command


app.command("add")(_with_field_options(add))


def render_tests(results: list[CredentialTest], as_json: bool) -> bool:
    if as_json:
        print_json(results)
    else:
        print_table(
            results,
            [
                ("credential", "name"),
                ("ok", "ok"),
                ("missing permissions", "missing_permissions"),
                ("machines seen", "machines_seen"),
                ("error", "error"),
            ],
            title="Permission check",
        )
    return all(r.ok for r in results)


@app.command("test")
def test(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("credential")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check the documented permissions and list machines with the credential."""
    with client(ctx) as c:
        ok = render_tests([c.test_credential(ref)], as_json)
    if not ok:
        raise typer.Exit(1)


add_resource_commands(
    app,
    Resource(
        noun="credential",
        title="Credentials",
        columns=COLUMNS,
        get=lambda c, ref: c.get_credential(ref),
        list_page=lambda c, **page: c.list_credentials(**page),
        delete=lambda c, ref: c.delete_credential(ref),
        delete_command="remove",
        delete_help="Remove a credential that nothing uses any more.",
        kind="credential",
    ),
)


@app.command("update")
def update(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    secret: list[str] | None = typer.Option(
        None, "--secret", help="KEY: prompt (hidden) for a new value of this secret field (repeat)."
    ),
    from_env: bool = typer.Option(False, "--from-env", help="New secret from AWS_* / AZURE_* variables."),
    option: list[str] | None = typer.Option(
        None, "--option", help="Non-secret KEY=VALUE; replaces all options when given."
    ),
    description: str | None = typer.Option(None, "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Replace the keys or secret of a credential in use (checked against the cloud before stored)."""
    with client(ctx) as c:
        current = c.get_credential(ref)
        given: dict[str, str] = {}
        for item in secret or []:
            key, sep, value = item.partition("=")
            given[key] = value if sep else typer.prompt(key, hide_input=True)
        secrets = _secrets(current.provider, given, from_env, prompt=False) if given or from_env else None
        if (secret is not None or from_env) and not secrets:
            raise ConfigurationError("no new secret was given", hint="use --secret KEY or --from-env")
        changes: dict[str, Any] = {"secret": secrets} if secrets else {}
        if option is not None:
            changes["options"] = dict(parse_pairs(option, "--option"))
        if description is not None:
            changes["description"] = description
        if not changes:
            raise ConfigurationError(
                "nothing to change", hint="give --secret, --from-env, --option or --description"
            )
        view = c.update_credential(ref, CredentialUpdate(**changes))
    if as_json:
        print_json(view)
    else:
        success(f"credential {view.name} updated ({', '.join(sorted(changes))})")


_AT_THE_CLOUD = {
    "aws": "create a new access key for the IAM user, `cloudkeep credential update {name} --from-env`, "
    "then deactivate and delete the old key in IAM",
    "azure": "add a new client secret to the app registration, `cloudkeep credential update {name} "
    "--secret client_secret`, then delete the old secret in Entra ID",
}


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context, yes: bool = YES_OPTION, dry_run: bool = DRY_RUN_OPTION, as_json: bool = JSON_OPTION
) -> None:
    """Rotate the server's master key: every stored secret is re-encrypted with a new key.

    The cloud keys themselves do not change; what to do at the cloud to rotate them is printed."""
    with client(ctx) as c:
        creds = c.list_credentials(limit=500).items
        at_cloud = [(v.name, _AT_THE_CLOUD[v.provider]) for v in creds if v.provider in _AT_THE_CLOUD]
        if dry_run:
            message = f"would re-encrypt the secrets of {len(creds)} credential(s) and every repository"
            if as_json:
                print_json({"dry_run": True, "credentials": [v.name for v in creds]})
            else:
                console().print(message + " with a new master key")
            return
        confirm("Re-encrypt every stored secret with a new master key?", yes=yes)
        result = c.rotate_key()
    if as_json:
        print_json(result)
        return
    success(f"master key rotated to {result.new_key_id}; {result.resealed} secret(s) re-sealed")
    for name, steps in at_cloud:
        console().print(f"to rotate the cloud keys of {name}: " + steps.format(name=name))
