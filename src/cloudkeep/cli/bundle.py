"""`cloudkeep bundle …`: build and inspect the installer bundles that rescan hands to machines."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.config import Settings
from cloudkeep.errors import CloudkeepError

app = typer.Typer(
    help="Installer bundles (the machine-side services, signed by this server).", no_args_is_help=True
)


def _fail(exc: CloudkeepError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("build")
def build(
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: the server's bundle cache)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Bundle version (default: the server's current one)."
    ),
) -> None:
    """Build the Linux and Windows bundles from the installed package and sign them with the server key."""
    from cloudkeep.machine.bundle import build_bundle
    from cloudkeep.server.context import open_context
    from cloudkeep.server.rescan.bundles import bundle_cache_dir, current_bundle_version

    try:
        ctx = open_context(Settings())
        try:
            version = version or current_bundle_version(ctx)
            folder = out or bundle_cache_dir(ctx) / version
            manifest = build_bundle(folder, version=version, signing_key=ctx.signing_key)
        finally:
            ctx.close()
    except CloudkeepError as exc:
        _fail(exc)
        return
    typer.echo(f"bundle {manifest.version} built in {folder}")
    for platform, archive in sorted(manifest.archives.items()):
        typer.echo(f"  {platform:8} {archive.file}  {archive.size:>9} bytes  sha256 {archive.sha256}")


@app.command("show")
def show(
    folder: Path | None = typer.Argument(
        None, help="A bundle folder (default: the server's current bundle)."
    ),
) -> None:
    """Show a bundle's version, files and checksums, and whether its signature verifies for this server."""
    from cloudkeep.machine.bundle import BundleManifest
    from cloudkeep.server.context import open_context
    from cloudkeep.server.rescan.bundles import bundle_cache_dir, current_bundle_version

    try:
        ctx = open_context(Settings())
        try:
            folder = folder or bundle_cache_dir(ctx) / current_bundle_version(ctx)
            if not (folder / "manifest.json").is_file():
                raise CloudkeepError(f"no bundle in {folder}", hint="run `cloudkeep bundle build`")
            manifest = BundleManifest.load(folder)
            try:
                manifest.verify_signature(ctx.public_key_b64)
                manifest.verify_files(folder)
                verdict = "signature and checksums OK"
            except CloudkeepError as exc:
                verdict = f"NOT VALID: {exc}"
        finally:
            ctx.close()
    except CloudkeepError as exc:
        _fail(exc)
        return
    typer.echo(f"bundle {manifest.version} (built {manifest.built_at}) in {folder}: {verdict}")
    for name, entry in sorted(manifest.files.items()):
        typer.echo(f"  {name:40} {entry.size:>9} bytes  sha256 {entry.sha256}")
    for platform, archive in sorted(manifest.archives.items()):
        typer.echo(f"  {platform} archive: {archive.file} sha256 {archive.sha256}")
