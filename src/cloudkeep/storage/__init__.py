"""Storage backends: dumb bytes under keys, one narrow interface, registered by URL scheme."""

from cloudkeep.storage.base import (
    ObjectExistsError,
    ObjectInfo,
    ObjectLockedError,
    ObjectNotFoundError,
    ObjectStore,
    open_store,
    register_backend,
)

__all__ = [
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectLockedError",
    "ObjectNotFoundError",
    "ObjectStore",
    "open_store",
    "register_backend",
]
