"""Content-defined chunking parameters (FastCDC 2020 via ``pyfastcdc``).

Defaults: minimum 256 KiB, target 1 MiB (pyfastcdc's real mean is target + minimum ≈ 1.25 MiB),
maximum 8 MiB. Why: a multi-GiB machine yields ~1 000 chunks per GiB, so a 1 TiB repository has
under a million index entries (tens of MB of RAM); 1 MiB is small enough that a 2 % change to a
large file re-uploads only the chunks around each edit. Smaller chunks would dedup slightly
better but multiply index size, per-blob overhead and request counts. Each repository has its
own random gear-table seed, so chunk boundaries (and hence sizes) do not reveal known files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE
    seed: int = 0

    def make(self) -> FastCDC:
        """A new chunker; FastCDC instances are not thread-safe, so each worker makes its own."""
        return FastCDC(avg_size=self.avg_size, min_size=self.min_size, max_size=self.max_size, seed=self.seed)

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "fastcdc2020",
            "min": self.min_size,
            "avg": self.avg_size,
            "max": self.max_size,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkerParams:
        return cls(int(data["min"]), int(data["avg"]), int(data["max"]), int(data["seed"]))
