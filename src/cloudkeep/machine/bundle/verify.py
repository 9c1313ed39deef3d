"""``python -m cloudkeep.machine.bundle.verify DIR --public-key B64``: check a bundle folder by hand.

Exit 0 when the manifest is signed by the key and every file matches; 4 otherwise, with the reason.
The installers carry their own copy of these checks (they run before this package is trusted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloudkeep.errors import CloudkeepError
from cloudkeep.machine.bundle.manifest import BundleManifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudkeep.machine.bundle.verify")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--public-key", required=True, help="the server's Ed25519 public key, base64")
    parser.add_argument("--platform", choices=["linux", "windows"], default=None)
    args = parser.parse_args(argv)
    try:
        manifest = BundleManifest.load(args.folder)
        manifest.verify_signature(args.public_key)
        manifest.verify_files(args.folder, args.platform)
    except (CloudkeepError, OSError, ValueError) as exc:
        print(f"CLOUDKEEP-ERROR {exc}")
        return 4
    print(f"bundle {manifest.version} verified ({len(manifest.files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
