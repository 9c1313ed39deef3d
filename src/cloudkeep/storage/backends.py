"""The built-in backends by URL scheme, each imported only when a store of its scheme is opened.

Like fsspec's ``known_implementations``: opening ``file://…`` never imports boto3 or the Azure
SDK. A backend outside cloudkeep registers itself with ``register_backend`` instead.
"""

KNOWN_BACKENDS: dict[str, str] = {
    "file": "cloudkeep.storage.local:LocalStore",
    "memory": "cloudkeep.storage.memory:MemoryStore",
    "s3": "cloudkeep.storage.s3:S3Store",
    "azure": "cloudkeep.storage.azure_blob:AzureBlobStore",
}
