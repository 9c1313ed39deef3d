"""CPU of the backup's encode stage alone over a tree's chunks (issue 18): content ids, compression,
sealing and pack writes on one thread, without the walk, the file cache or the pool, so that a
change to the stage shows through the noise of a shared machine.

    python bench/encode_stage.py <checkout> <tree>    # imports <checkout>/src: compare two commits
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(sys.argv[1], "src"))

from pyfastcdc import FastCDC

from cloudkeep.repo.crypto import Crypter, MasterKey
from cloudkeep.repo.pack import DATA, PackWriter, blob_aad

PACK_SIZE = 32 * 2**20


def chunks_of(path: str, cdc: FastCDC) -> list[bytes]:
    """What the backup makes of one file (a small file is one chunk)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 256 * 1024:
        return [data] if data else []
    return [bytes(chunk.data) for chunk in cdc.cut_buf(data)]


def main(tree: str) -> None:
    crypter = Crypter(MasterKey(b"k" * 32, b"i" * 32))  # fixed: same ids run to run
    cdc = FastCDC(avg_size=2**20, min_size=256 * 1024, max_size=8 * 2**20, seed=0)
    staging = tempfile.mkdtemp()
    pack = PackWriter(DATA, staging)
    cpu, stored, blobs = 0.0, 0, 0
    for folder, dirs, names in os.walk(tree):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            chunks = chunks_of(path, cdc)
            start = time.process_time()
            for data in chunks:
                blob_id = crypter.content_id(data)
                sealed = crypter.encode_into_buffer(data, blob_aad(DATA, blob_id))
                pack.add(blob_id, sealed, len(data))
                stored, blobs = stored + len(sealed), blobs + 1
                if pack.size >= PACK_SIZE:
                    pack.finish(crypter)
                    os.unlink(pack.path)
                    pack = PackWriter(DATA, staging)
            cpu += time.process_time() - start
    pack.discard()
    os.rmdir(staging)
    print(f"{sys.argv[1]}: {blobs} blobs, stored {stored / 2**20:.2f} MiB, encode stage CPU {cpu:.2f} s")


if __name__ == "__main__":
    main(sys.argv[2])
