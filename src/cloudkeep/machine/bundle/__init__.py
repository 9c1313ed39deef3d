"""Installer bundles: the package, the platform installers and a signed manifest.

Built by ``cloudkeep bundle build``; rescan hands them to machines.
"""

from cloudkeep.machine.bundle.builder import archive_name, build_bundle, load_or_build, wheel_name
from cloudkeep.machine.bundle.manifest import BundleManifest

__all__ = ["BundleManifest", "archive_name", "build_bundle", "load_or_build", "wheel_name"]
