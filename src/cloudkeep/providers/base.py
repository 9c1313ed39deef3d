"""The provider interface: what the server needs from a cloud, and nothing more.

A provider is a small bundle of four services. Each cloud implements them in its own folder
(``providers/aws``, ``providers/azure``, ``providers/local``) and states what the rest of
cloudkeep may know about it in that folder's ``facts.py``; ``providers/registry`` finds it by
name. Adding a cloud means adding one folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from cloudkeep.compat import StrEnum
from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.facts import ProviderFacts
from cloudkeep.storage.base import ObjectStore
from cloudkeep.storage.conformance import StoreCheck


class Platform(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"


@dataclass(frozen=True)
class Machine:
    """A cloud machine as the cloud's own API describes it (never by connecting to it)."""

    id: str  # EC2 instance id, Azure VM resource id, or local machine name
    name: str
    platform: Platform
    state: str  # running / stopped / … as the cloud says
    region: str
    tags: Mapping[str, str] = field(default_factory=dict)
    boot_mode: str | None = None  # "uefi" / "legacy-bios" where the API exposes it
    secure_boot: bool | None = None  # None: the API does not say
    private_ip: str | None = None
    hostname: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InventoryScope:
    """Which machines a protection group covers. Tag keys compare case-insensitively."""

    regions: tuple[str, ...] = ()  # AWS regions / Azure locations or subscriptions; empty = provider default
    machine_ids: tuple[str, ...] = ()  # empty = all
    include_tags: Mapping[str, str] = field(default_factory=dict)  # all must match
    exclude_ids: tuple[str, ...] = ()
    exclude_tags: Mapping[str, str] = field(default_factory=dict)  # any match excludes
    platforms: tuple[Platform, ...] = ()  # empty = all; filtered client-side (moto lacks the EC2 filter)

    def matches(self, machine: Machine) -> bool:
        """Apply ids, tags and exclusions on the client side (regions are the caller's job)."""
        if self.machine_ids and machine.id not in self.machine_ids and machine.name not in self.machine_ids:
            return False
        if machine.id in self.exclude_ids or machine.name in self.exclude_ids:
            return False
        if self.platforms and machine.platform not in self.platforms:
            return False
        tags = {k.lower(): v for k, v in machine.tags.items()}
        if any(tags.get(k.lower()) != v for k, v in self.include_tags.items()):
            return False
        return not any(tags.get(k.lower()) == v for k, v in self.exclude_tags.items())


class Inventory(ABC):
    @abstractmethod
    def list_machines(self, scope: InventoryScope) -> Iterator[Machine]:
        """Discover machines through the cloud API, paginating and backing off on throttling."""

    @abstractmethod
    def get_machine(self, machine_id: str) -> Machine | None: ...

    @abstractmethod
    def set_tag(self, machine_id: str, key: str, value: str) -> None:
        """Used for the ownership marker (``cloudkeep:server``)."""

    @abstractmethod
    def remove_tag(self, machine_id: str, key: str) -> None: ...


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    command_id: str | None = None  # the cloud's id (SSM command id, run command name)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


Shell = Literal["shell", "powershell"]
T = TypeVar("T")


class CallPacer(Protocol):
    """Runs one control-plane call within the cloud's published rate limits (the server's
    ``ApiPacer``): ``kind`` is "read" or "write", counted per region or account as the provider's
    facts say; a throttled call is retried after a backoff. A channel passes each API call through
    it on its own, so a retry repeats that call only (never a whole command)."""

    def call(self, kind: str, region: str, action: Callable[[], T]) -> T: ...


def paced(pacer: CallPacer | None, kind: str, region: str, action: Callable[[], T]) -> T:
    """``action()`` through ``pacer`` when there is one (tests and the local lab run unpaced)."""
    return action() if pacer is None else pacer.call(kind, region, action)


@dataclass(frozen=True)
class CommandCapacity:
    """How full a machine's command slots are where the cloud limits them (Azure's run commands)."""

    in_use: str  # reported with the prerequisites, e.g. "24 managed run commands"
    refusal: str | None = None  # set when the machine cannot take one more: what is in the way
    remedy: str = ""  # the cloud's limit and what to do about it


class CommandChannel(ABC):
    """The cloud's own way to run a script on a machine: SSM Run Command, Azure Run Command, subprocess."""

    @abstractmethod
    def run(
        self, machine: Machine, script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
    ) -> CommandResult:
        """Run ``script`` (shell on Linux, PowerShell on Windows) and return its full output; every
        cloud API call it makes (start: a write; status and result reads) goes through ``pacer``."""

    # Machines one call can address with the same script (SSM SendCommand: 50); 1 where each
    # machine needs its own call, and then ``run_many`` gains nothing over ``run``.
    batch_size: ClassVar[int] = 1

    def command_capacity(self, machine: Machine) -> CommandCapacity | None:
        """Asked before deploying: how full the machine's command slots are; None where no limit applies."""
        return None

    def run_many(
        self, machines: list[Machine], script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
    ) -> dict[str, CommandResult | CloudkeepError]:
        """Run the same script on many machines: machine id -> its result, or the error that kept it
        from running (one machine's failure never fails the others). Every API call goes through
        ``pacer``: a channel that addresses many machines a call takes one write token per call."""
        results: dict[str, CommandResult | CloudkeepError] = {}
        for machine in machines:
            try:
                results[machine.id] = self.run(machine, script, timeout=timeout, pacer=pacer)
            except CloudkeepError as error:
                results[machine.id] = error
        return results


@dataclass
class ReceivedMessage:
    body: str
    receipt: str  # opaque handle used to ack / extend / dead-letter
    message_id: str
    receive_count: int = 1
    sent_at: datetime | None = None


class Queue(ABC):
    """One message queue. Messages must stay under 64 KiB; larger payloads go by reference."""

    name: str
    max_message_bytes: int = 64 * 1024

    @abstractmethod
    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        """Enqueue; returns the message id."""

    @abstractmethod
    def receive(
        self, *, max_messages: int = 10, visibility_timeout: int = 30, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        """Receive up to ``max_messages``, waiting up to ``wait_seconds`` (long poll or polled back-off)."""

    @abstractmethod
    def ack(self, message: ReceivedMessage) -> None:
        """Delete a processed message."""

    def ack_many(self, messages: list[ReceivedMessage]) -> None:
        """Delete several processed messages; providers with a batch call override this."""
        for message in messages:
            self.ack(message)

    @abstractmethod
    def extend_visibility(self, message: ReceivedMessage, seconds: int) -> None: ...

    @abstractmethod
    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        """Move a message that must never be executed to this queue's dead-letter queue."""

    @abstractmethod
    def approximate_count(self) -> int: ...


def dead_letter_queue_name(name: str) -> str:
    """Every provider keeps queue ``name``'s dead letters in a queue of this name (readable via get_queue)."""
    return f"{name}-dlq"


# What a machine may do on a queue: ``consume`` its own, only ``send`` to the shared server queue.
QueueAccess = Literal["consume", "send"]


class QueueService(ABC):
    @abstractmethod
    def ensure_queue(self, name: str, *, max_receive_count: int = 5) -> Queue:
        """Create the queue (and its dead-letter queue) if missing; idempotent.

        A message received more than ``max_receive_count`` times without an ack moves to the
        dead-letter queue (``dead_letter_queue_name(name)``).
        """

    @abstractmethod
    def get_queue(self, name: str) -> Queue: ...

    @abstractmethod
    def delete_queue(self, name: str) -> None: ...

    @abstractmethod
    def connection_info(self, name: str, *, access: QueueAccess = "consume") -> dict[str, Any]:
        """What a machine needs to reach queue ``name`` (URL, endpoint, SAS, …), JSON-serialisable.

        ``access="consume"`` (the machine's own queue): receive, delete, dead-letter and send.
        ``access="send"`` (the server queue every machine reports to): add messages only, so one
        machine cannot read or delete another's reports — where the cloud can express that.
        """


@dataclass(frozen=True)
class ScopedCredentials:
    """Temporary credentials an agent can use to write only its own prefix; JSON-serialisable."""

    provider: str
    store_url: str  # e.g. s3://bucket/prefix, azure://container/prefix, file:///path
    options: Mapping[str, Any]  # passed to open_store (keys, session token, SAS, endpoint)
    expires_at: datetime

    def open_store(self) -> ObjectStore:
        from cloudkeep.storage.base import open_store

        return open_store(self.store_url, **dict(self.options))


class StorageService(ABC):
    """Object storage as the control plane sees it: stores, signed URLs, scoped credentials."""

    @abstractmethod
    def open_store(self, location: str) -> ObjectStore:
        """``location`` is ``bucket[/prefix]`` (or a folder for local)."""

    @abstractmethod
    def ensure_container(self, location: str, *, object_lock: bool = False) -> None: ...

    @abstractmethod
    def signed_url(
        self, location: str, key: str, *, method: Literal["GET", "PUT"], expires_seconds: int
    ) -> str:
        """A short-lived URL for one object (S3 presigned URL, Azure SAS, local HMAC-signed URL)."""

    @abstractmethod
    def scoped_credentials(self, location: str, prefix: str, *, expires_seconds: int) -> ScopedCredentials:
        """Credentials that can read the repository and write only under ``prefix``."""

    def compatibility_checks(self, location: str) -> list[StoreCheck]:
        """Provider-side checks for ``cloudkeep repository verify`` (e.g. how agents get credentials)."""
        return []


class CloudProvider(ABC):
    """A cloud account as one credential sees it."""

    facts: ClassVar[ProviderFacts]  # the folder's facts.py: channel name, queue waits, credential fields

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    @abstractmethod
    def inventory(self) -> Inventory: ...

    @property
    @abstractmethod
    def commands(self) -> CommandChannel: ...

    @property
    @abstractmethod
    def queues(self) -> QueueService: ...

    @property
    @abstractmethod
    def storage(self) -> StorageService: ...

    def check_permissions(self) -> list[str]:
        """Return the documented permissions this credential lacks (dry-run checks); empty if none."""
        return []

    def check_configuration(self) -> list[str]:
        """Problems in the provider's options that an operation would only meet later (doctor)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients, servers and connections; the default has none."""
