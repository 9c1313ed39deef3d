"""`cloudkeep credential …`: cloud credentials (stored encrypted, never printed)."""

from __future__ import annotations

import os
from typing import Any

import typer
from pydantic import SecretStr

from cloudkeep.cli.common import (
    JSON_OPTION,
    Col,
    Column,
    client,
    parse_pairs,
    print_json,
    print_table,
    success,
)
from cloudkeep.cli.completion import PROVIDERS, choices, names_of
from cloudkeep.cli.resource import Resource, add_resource_commands
from cloudkeep.errors import ConfigurationError
from cloudkeep.server.services.schemas import CredentialCreate, CredentialTest

app = typer.Typer(help="Cloud credentials.", no_args_is_help=True)

# Secret fields per provider: (credential key, environment variable read by --from-env).
PROVIDER_SECRETS: dict[str, list[tuple[str, str]]] = {
    "aws": [
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("aws_session_token", "AWS_SESSION_TOKEN"),
    ],
    "azure": [
        ("tenant_id", "AZURE_TENANT_ID"),
        ("client_id", "AZURE_CLIENT_ID"),
        ("client_secret", "AZURE_CLIENT_SECRET"),
    ],
    "local": [],
}
# A secret to prompt for when its partner is given (AWS without keys uses boto3's default chain).
_PROMPT_FOR = {"aws": ("aws_access_key_id", "aws_secret_access_key"), "azure": ("client_id", "client_secret")}
COLUMNS: list[Column] = [
    ("name", "name"),
    ("provider", "provider"),
    ("options", "options"),
    ("created", "created_at"),
    Col("id", "id", wide=True),
]


def _secrets(provider: str, given: dict[str, str], from_env: bool, prompt: bool) -> dict[str, SecretStr]:
    values = dict(given)
    if from_env:
        for key, env in PROVIDER_SECRETS[provider]:
            if os.environ.get(env) and key not in values:
                values[key] = os.environ[env]
    if prompt:
        partner = _PROMPT_FOR.get(provider)
        if partner and values.get(partner[0]) and partner[1] not in values:
            values[partner[1]] = typer.prompt(partner[1], hide_input=True)
    return {k: SecretStr(v) for k, v in values.items() if v}


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name."),
    provider: str = typer.Option(
        ..., "--provider", help="aws | azure | local", autocompletion=choices(*PROVIDERS)
    ),
    access_key_id: str | None = typer.Option(None, "--access-key-id", help="AWS access key id."),
    tenant_id: str | None = typer.Option(None, "--tenant-id", help="Azure tenant id."),
    client_id: str | None = typer.Option(None, "--client-id", help="Azure client (application) id."),
    subscription_id: str | None = typer.Option(None, "--subscription-id", help="Azure subscription id."),
    role_arn: str | None = typer.Option(None, "--role-arn", help="AWS: assume this role first."),
    external_id: str | None = typer.Option(None, "--external-id", help="AWS: external id for the role."),
    secret: list[str] | None = typer.Option(
        None,
        "--secret",
        help="KEY: prompt (hidden) for a secret field; KEY=VALUE is accepted but lands in history.",
    ),
    from_env: bool = typer.Option(False, "--from-env", help="Read AWS_* / AZURE_* variables for the secret."),
    option: list[str] | None = typer.Option(
        None, "--option", help="Non-secret KEY=VALUE (endpoint_url, region …)."
    ),
    region: list[str] | None = typer.Option(None, "--region", help="Default region(s) to look in."),
    lab_dir: str | None = typer.Option(None, "--lab-dir", help="local provider: the lab folder."),
    description: str = typer.Option("", "--description"),
    no_prompt: bool = typer.Option(False, "--no-prompt", help="Never prompt (fail instead)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a credential; secrets come from --from-env or a hidden prompt and are never echoed."""
    if provider not in PROVIDER_SECRETS:
        raise ConfigurationError(f"unknown provider {provider!r}", hint="use aws, azure or local")
    given: dict[str, str] = {}
    for item in secret or []:
        key, sep, value = item.partition("=")
        given[key] = value if sep else typer.prompt(key, hide_input=True)
    identity = {
        "aws_access_key_id": access_key_id,
        "role_arn": role_arn,
        "external_id": external_id,
        "tenant_id": tenant_id,
        "client_id": client_id,
        "subscription_id": subscription_id,
    }
    given.update({k: v for k, v in identity.items() if v})
    options: dict[str, Any] = dict(parse_pairs(option, "--option"))
    if region:
        options["regions"] = list(region)
    if lab_dir:
        options["lab_dir"] = lab_dir
    needs_prompt = not no_prompt and provider != "local"
    data = CredentialCreate(
        name=name,
        provider=provider,  # type: ignore[arg-type]
        secret=_secrets(provider, given, from_env, needs_prompt),
        options=options,
        description=description,
    )
    with client(ctx) as c:
        view = c.create_credential(data)
    if as_json:
        print_json(view)
    else:
        success(f"credential {view.name} added ({view.id[:8]})")


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
