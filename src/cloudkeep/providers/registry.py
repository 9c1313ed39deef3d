"""The built-in providers by name, each imported only when first asked for.

Like fsspec's ``known_implementations``: a name maps to the module path of the cloud's
``ProviderFacts`` (SDK-free), which in turn names the modules of the provider and its queue
opener. ``import cloudkeep.providers`` therefore imports no cloud SDK; asking for the AWS provider
imports boto3 and nothing of Azure, and the other way round. Names come only from this table
(or ``register_provider``), never from a message or a config file, so nothing untrusted chooses
what is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pkgutil import resolve_name
from typing import Any, cast

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.base import CloudProvider
from cloudkeep.providers.facts import ProviderFacts

KNOWN_PROVIDERS: dict[str, str] = {
    "aws": "cloudkeep.providers.aws.facts:FACTS",
    "azure": "cloudkeep.providers.azure.facts:FACTS",
    "local": "cloudkeep.providers.local.facts:FACTS",
}
ProviderFactory = Callable[[Mapping[str, Any], Mapping[str, Any]], CloudProvider]
_LOADED: dict[str, ProviderFacts] = {}
_LOCK = threading.Lock()


def provider_kinds() -> tuple[str, ...]:
    """Every provider name, without importing any provider."""
    return tuple(sorted({*KNOWN_PROVIDERS, *_LOADED}))


def register_provider(facts: ProviderFacts) -> None:
    """Add (or replace) a provider at run time, e.g. one shipped outside cloudkeep."""
    with _LOCK:
        _LOADED[facts.kind] = facts


def provider_facts(kind: str) -> ProviderFacts:
    """The facts of provider ``kind``; imports its ``facts`` module, never its SDK."""
    with _LOCK:
        if kind not in _LOADED:
            path = KNOWN_PROVIDERS.get(kind)
            if path is None:
                raise ConfigurationError(
                    f"unknown cloud provider {kind!r}", hint=f"use one of: {', '.join(provider_kinds())}"
                )
            facts = resolve_name(path)
            if not isinstance(facts, ProviderFacts) or facts.kind != kind:
                raise TypeError(f"{path} is not the ProviderFacts of {kind!r}")
            _LOADED[kind] = facts
        return _LOADED[kind]


def all_provider_facts() -> list[ProviderFacts]:
    return [provider_facts(kind) for kind in provider_kinds()]


def get_provider(
    kind: str, credential: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> CloudProvider:
    """Build a provider from a (decrypted) credential and options such as endpoint URLs."""
    factory = cast(ProviderFactory, resolve_name(provider_facts(kind).factory))
    return factory(credential, options or {})
