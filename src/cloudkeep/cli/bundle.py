"""`cloudkeep bundle …`: build and inspect the installer bundles that rescan hands to machines."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.cli.common import JSON_OPTION, dump, print_json, state
from cloudkeep.errors import CloudkeepError, ConfigurationError

app = typer.Typer(
    help="Installer bundles (the machine-side services, signed by this server).", no_args_is_help=True
)


@app.command("build")
def build(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: the server's bundle cache)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Bundle version (default: the server's current one)."
    ),
    wheelhouse: Path | None = typer.Option(
        None,
        "--wheelhouse",
        help="Folder of dependency wheels (<arch>/cp3X/*.whl) for an air-gapped server; "
        "default: fetched once with pip into the server's wheelhouse cache.",
    ),
    no_wheels: bool = typer.Option(
        False, "--no-wheels", help="No dependency wheels (labs whose machines bring them: CLOUDKEEP_PYTHON)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build the Linux and Windows bundles from the installed package and sign them with the server key.

    The Linux bundle carries the dependency wheels for x86_64 and aarch64 (CPython 3.9-3.13), so
    machines install without reaching a package index.
    """
    from cloudkeep.machine.bundle import build_bundle
    from cloudkeep.machine.bundle.wheelhouse import fetch_wheelhouse
    from cloudkeep.server.context import open_context
    from cloudkeep.server.rescan.bundles import bundle_cache_dir, current_bundle_version, wheelhouse_dir

    settings = state(ctx).settings
    if settings.api_url:  # the signing key never leaves the server host
        raise ConfigurationError(
            "`cloudkeep bundle build` signs with the server's key, so it runs on the server host",
            hint="run it there without --api-url / CLOUDKEEP_API_URL",
        )
    server = open_context(settings)
    try:
        version = version or current_bundle_version(server)
        folder = out or bundle_cache_dir(server) / version
        if wheelhouse is None and not no_wheels:
            typer.echo("fetching the machine wheels (once; cached) ...", err=True)
            wheelhouse = fetch_wheelhouse(wheelhouse_dir(server))
        wheels = None if no_wheels else wheelhouse
        manifest = build_bundle(folder, version=version, signing_key=server.signing_key, wheelhouse=wheels)
    finally:
        server.close()
    if as_json:
        print_json({"version": manifest.version, "folder": str(folder), "archives": dump(manifest.archives)})
        return
    typer.echo(f"bundle {manifest.version} built in {folder}")
    for platform, archive in sorted(manifest.archives.items()):
        typer.echo(f"  {platform:8} {archive.file}  {archive.size:>9} bytes  sha256 {archive.sha256}")


@app.command("show")
def show(
    ctx: typer.Context,
    folder: Path | None = typer.Argument(
        None, help="A bundle folder (default: the server's current bundle)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a bundle's version, files and checksums, and whether its signature verifies for this server.

    Read-only: it never creates server state (remote, the key comes from the server's API).
    """
    from cloudkeep.machine.bundle import BundleManifest

    # errors reach the root command group, which prints them with their hint and exit code
    folder, public_key = _folder_and_key(ctx, folder)
    if not (folder / "manifest.json").is_file():
        raise CloudkeepError(f"no bundle in {folder}", hint="run `cloudkeep bundle build`")
    manifest = BundleManifest.load(folder)
    valid = True
    try:
        manifest.verify_signature(public_key)
        manifest.verify_files(folder)
        verdict = "signature and checksums OK"
    except CloudkeepError as exc:
        valid, verdict = False, f"NOT VALID: {exc}"
    if as_json:
        print_json(
            {
                "version": manifest.version,
                "built_at": manifest.built_at,
                "folder": str(folder),
                "valid": valid,
                "verdict": verdict,
                "files": dump(manifest.files),
                "archives": dump(manifest.archives),
            }
        )
        return
    typer.echo(f"bundle {manifest.version} (built {manifest.built_at}) in {folder}: {verdict}")
    for name, entry in sorted(manifest.files.items()):
        typer.echo(f"  {name:40} {entry.size:>9} bytes  sha256 {entry.sha256}")
    for platform, archive in sorted(manifest.archives.items()):
        typer.echo(f"  {platform} archive: {archive.file} sha256 {archive.sha256}")


def _folder_and_key(ctx: typer.Context, folder: Path | None) -> tuple[Path, str]:
    """The bundle folder to show and the server public key its signature must verify against."""
    from cloudkeep.server.client import open_client
    from cloudkeep.server.context import open_context
    from cloudkeep.server.rescan.bundles import bundle_cache_dir, current_bundle_version

    settings = state(ctx).settings
    if settings.api_url:
        if folder is None:
            raise ConfigurationError(
                "the server's bundle cache is on the server host; name a bundle folder to check",
                hint="cloudkeep bundle show <folder>",
            )
        with open_client(settings) as client:
            return folder, client.server_info().public_key
    server = open_context(settings, create=False)
    try:
        return folder or bundle_cache_dir(server) / current_bundle_version(server), server.public_key_b64
    finally:
        server.close()
