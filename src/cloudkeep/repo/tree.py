"""Directory trees: one tree blob per directory, addressed by content id like any other blob.

An unchanged directory serialises to the same bytes and therefore the same id, so it is stored
once across every restore point. A node records what restore needs to recreate the entry:
type, mode, owner, times, xattrs (which carry POSIX ACLs on Linux), symlink target, hardlink
identity, sparseness, and the list of content chunks.

Names, symlink targets and xattr names are the file system's bytes as ``os.fsdecode`` gives them:
a byte that is not UTF-8 is a lone surrogate, which ``json.dumps`` writes as a ``\\udcXX`` escape
and ``json.loads`` reads back, so every name a Linux file system allows round-trips byte-exactly.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from cloudkeep.compat import SLOTS, UTC
from cloudkeep.pathnames import path_fields

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
NODE_TYPES = (FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV)


@dataclass(**SLOTS)
class Node:
    """One entry of a directory, as stored in its tree blob (slots: a restore plans one per file)."""

    name: str
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    rdev: int = 0
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sparse: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
        }
        # atime/ctime change on every read or chmod: storing them would give an unchanged directory a
        # new tree id on every backup. The file cache keeps ctime for change detection instead.
        for attr in ("uid", "gid", "user", "group", "size", "inode", "device", "rdev"):
            value = getattr(self, attr)
            if value:
                out[attr] = value
        if self.links != 1:
            out["links"] = self.links
        if self.content:
            out["content"] = [c.hex() for c in self.content]
        if self.subtree is not None:
            out["subtree"] = self.subtree.hex()
        if self.target:
            out["target"] = self.target
        if self.xattrs:
            out["xattrs"] = {k: v.hex() for k, v in sorted(self.xattrs.items())}
        if self.sparse:
            out["sparse"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        """A node of a tree's parsed JSON. Every field set here, each from its key or its default
        (``test_tree_encoding`` checks they are the dataclass's): a restore plans one node per
        entry, and the dataclass's ``__init__`` then a pass over the keys present took 1.8 µs a
        file, this 0.9."""
        get = data.get
        node = _new_node(cls)
        node.name = data["name"]
        node.type = sys.intern(data["type"])
        node.mode = get("mode", 0)
        node.uid = get("uid", 0)
        node.gid = get("gid", 0)
        # The same few owner names repeat on every node: one string each, not one per file.
        node.user = sys.intern(get("user", ""))
        node.group = sys.intern(get("group", ""))
        node.mtime_ns = get("mtime_ns", 0)
        node.atime_ns = get("atime_ns", 0)
        node.ctime_ns = get("ctime_ns", 0)
        node.size = get("size", 0)
        node.inode = get("inode", 0)
        node.device = get("device", 0)
        node.links = get("links", 1)
        node.rdev = get("rdev", 0)
        node.target = get("target", "")
        node.sparse = get("sparse", False)
        node.content = [bytes.fromhex(c) for c in get("content", ())]
        subtree = get("subtree", _ABSENT)
        node.subtree = None if subtree is _ABSENT else bytes.fromhex(subtree)
        xattrs = get("xattrs", _ABSENT)
        node.xattrs = {} if xattrs is _ABSENT else {k: bytes.fromhex(v) for k, v in xattrs.items()}
        return node


_new_node = object.__new__  # a node without ``__init__``: ``from_json`` sets every field
_ABSENT: Any = object()  # a key the parsed node does not have


class FileText(NamedTuple):
    """A file's node as its tree has it, written by the backup worker process that read the file
    (``procworker.py``): the parent made a ``Node`` and its text per file (node tree: an eighth of
    its GIL time, the limit of a first backup of small files) and keeps this until the tree. As
    bytes: a large folder keeps one per file (a mail folder of 45,000 messages), ~100 bytes a
    file less than a text and a list of chunk ids."""

    name: str
    text: bytes  # ``node_json`` of its node, encoded
    chunks: bytes  # its chunk ids, concatenated (as the folder's row stores them; ``crypto.split_ids``)
    bare: bool  # it has no xattrs (the folder's row records it)


_TREE_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
_quote = json.encoder.encode_basestring_ascii  # what the encoder above writes a string as (C)


class _Unusual(Exception):
    """A field is not of its usual type (a node decoded from a repository): use the encoder."""


def _node_text(n: Node) -> str:
    """``_TREE_JSON.encode(n.to_json())`` written directly, keys in sorted order: a first backup
    stores a tree per folder, and the encoder (a dict per node, then its keys sorted) was an
    eighth of the parent's GIL time on a real /usr (bench/README.md, stop 36). Raises
    ``_Unusual`` rather than write a field of another type than a backup gives it."""
    out: list[str] = []
    add = out.append
    content, device, gid, group, inode, links = n.content, n.device, n.gid, n.group, n.inode, n.links
    if content:
        add('"content":["' + '","'.join([c.hex() for c in content]) + '"]')
    if device:
        add(f'"device":{device}')
    if gid:
        add(f'"gid":{gid}')
    if group:
        add('"group":' + _quote(group))
    if inode:
        add(f'"inode":{inode}')
    if links != 1:
        add(f'"links":{links}')
    mode, mtime, name, rdev, size, subtree = n.mode, n.mtime_ns, n.name, n.rdev, n.size, n.subtree
    add(f'"mode":{mode},"mtime_ns":{mtime},"name":{_quote(name)}')
    if rdev:
        add(f'"rdev":{rdev}')
    if size:
        add(f'"size":{size}')
    if n.sparse:
        add('"sparse":true')
    if subtree is not None:
        add(f'"subtree":"{subtree.hex()}"')
    target, kind, uid, user, xattrs = n.target, n.type, n.uid, n.user, n.xattrs
    if target:
        add('"target":' + _quote(target))
    add('"type":' + _quote(kind))
    if uid:
        add(f'"uid":{uid}')
    if user:
        add('"user":' + _quote(user))
    if xattrs:
        if not all(type(k) is str for k in xattrs):
            raise _Unusual
        add('"xattrs":{' + ",".join([f'{_quote(k)}:"{v.hex()}"' for k, v in sorted(xattrs.items())]) + "}")
    if not (
        type(device) is type(gid) is type(inode) is type(links) is type(mode) is type(mtime) is int
        and type(rdev) is type(size) is type(uid) is int
        and type(group) is type(name) is type(target) is type(kind) is type(user) is str
    ):
        raise _Unusual
    return "{" + ",".join(out) + "}"


def node_json(n: Node) -> str:
    """A node as its tree blob writes it."""
    try:
        return _node_text(n)
    except (_Unusual, TypeError, AttributeError):  # the encoder's own text, or its own error
        return _TREE_JSON.encode(n.to_json())


def encode_tree(nodes: Iterable[Node | FileText], *, ordered: bool = False) -> bytearray:
    """The same bytes as one ``json.dumps`` of ``{"nodes": [...]}`` (tree ids are their hash), made
    one node at a time into one buffer. For a folder of 18,000 files, one call held every node's
    dict, the encoder's pieces and the text at once (16 MiB at the backup's peak); the nodes' texts,
    their join and its encoding then were three copies of the tree at once (~30 MiB for a maildir
    folder of 50,000 messages), the buffer is one. ``ordered``: the nodes come in name order, each
    encoded as it comes (a backup makes them one by one, so they never all exist at once); one out
    of order is refused, as its tree would not be the one these nodes always give."""
    out = bytearray()
    for piece in tree_texts(nodes, ordered):
        out += piece
    return out


def tree_texts(nodes: Iterable[Node | FileText], ordered: bool) -> Iterator[bytes]:
    """``encode_tree``'s pieces as the nodes come (``BlobWriter.save_stream``)."""
    yield TREE_OPEN
    last = ""
    for i, node in enumerate(nodes if ordered else sorted(nodes, key=lambda n: n.name)):
        if i:
            yield b","
            if ordered and node.name <= last:
                raise ValueError(f"tree nodes out of name order: {node.name!r} after {last!r}")
        last = node.name
        yield node.text if isinstance(node, FileText) else node_json(node).encode()
    yield TREE_CLOSE


_T = TypeVar("_T")
_DECODER = json.JSONDecoder()
# The decoder's scanner: ``raw_decode`` without its Python frame per value (typeshed omits it).
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
# around a tree blob's nodes
TREE_OPEN, TREE_CLOSE = b'{"nodes":[', b"]}"
_OPEN_TEXT, _CLOSE_TEXT = TREE_OPEN.decode(), TREE_CLOSE.decode()
STREAM_TREE = 2**20  # bytes of a tree blob from which ``iter_tree_blob`` reads it in pieces
TREE_PIECE = 2**18  # bytes of a large tree's plaintext decompressed (and decoded to text) at a time
# What decoding a tree that is not one (hand-made, damaged) raises: the JSON, or a node of it.
MALFORMED = (ValueError, KeyError, TypeError, AttributeError)


def decode_tree(data: bytes) -> list[Node]:
    """A tree blob's nodes. A tree as ``encode_tree`` writes it is parsed node by node, each node's
    parsed JSON let go as its node is made: parsed whole, a folder of 50,000 files held ~45 MiB of
    dicts and strings beside its nodes (a restore's peak), and took longer. Anything else, or
    anything that parse refuses (or a node it cannot make), is parsed whole, which the node-by-node
    parse agrees with: the same nodes, or the same error."""
    if data.startswith(TREE_OPEN) and data.endswith(TREE_CLOSE):
        with contextlib.suppress(*MALFORMED):
            return list(_node_by_node(data.decode("utf-8", "surrogatepass")))  # as json.loads decodes
    return _parsed_whole(data)


class TreeBlob(Protocol):
    """A tree blob's plaintext, whole or in pieces of about ``size`` bytes, anew at each call
    (``pack.SealedBlob`` decrypts and decompresses them as they are taken)."""

    size: int

    def whole(self) -> bytes: ...

    def pieces(self, size: int) -> Iterator[bytes | memoryview]: ...


class _Plain:
    """A tree blob already whole, as a ``TreeBlob``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def whole(self) -> bytes:
        return self.data

    def pieces(self, size: int) -> Iterator[memoryview]:
        view = memoryview(self.data)
        for at in range(0, len(view), size):
            yield view[at : at + size]


def iter_tree(data: bytes) -> Iterator[Node]:
    """``iter_tree_blob`` of a blob already whole."""
    return iter_tree_blob(_Plain(data))


def iter_tree_blob(blob: TreeBlob) -> Iterator[Node]:
    """``decode_tree``'s nodes, a large tree's (``STREAM_TREE`` bytes) one at a time, each made as
    it is taken, from its plaintext in pieces of ``TREE_PIECE`` bytes; a small tree's read whole.

    A large tree is never whole in memory, as bytes or as text: a restore of a folder of 200,000
    messages held its plaintext and its text at once, 43 MiB each, where a few pieces are held now
    (bench/README.md, stop 53). The nodes are made in a second reading; the first checks the
    framing value by value (and, in ``SealedBlob``, the content id), so what comes is what
    ``decode_tree`` gives: the same nodes, or the nodes before the one it fails at, then its error.
    A tree framed otherwise (another writer's spacing, or not a tree) is parsed whole."""
    if blob.size < STREAM_TREE:
        yield from decode_tree(blob.whole())
        return
    try:
        collections.deque(_framed_values(blob.pieces(TREE_PIECE), _checked), maxlen=0)  # each let go
        framed = True
    except (_Unframed, ValueError):  # (a UnicodeDecodeError too: the whole parse gives its error)
        framed = False
    if not framed:
        yield from _parsed_whole(blob.whole())
        return
    yield from _framed_values(blob.pieces(TREE_PIECE), Node.from_json)


class _Unframed(Exception):
    """The text is not ``{"nodes":[`` values separated by single commas ``]}``, exactly."""


class _TextWindow:
    """A tree's text as its plaintext comes, piece by piece: only what is not parsed yet is held."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")("surrogatepass")  # as json.loads decodes
        self.text, self.at, self.ended = "", 0, False

    def more(self) -> bool:
        """Add at least as many characters as are left unparsed (one piece at least), dropping the
        parsed ones: a value longer than a piece is parsed again only a few times. False at the end."""
        if self.ended:
            return False
        parts = [self.text[self.at :]]
        wanted, got = max(len(parts[0]), 1), 0
        while got < wanted:
            piece = next(self._pieces, None)
            if piece is None:
                parts.append(self._utf8.decode(b"", final=True))
                self.ended = True
                break
            parts.append(self._utf8.decode(piece))
            got += len(parts[-1])
        self.text, self.at = "".join(parts), 0
        return True

    def need(self, count: int) -> str:
        """The next ``count`` characters not parsed yet (fewer only at the end)."""
        while len(self.text) - self.at < count and self.more():
            pass
        return self.text[self.at : self.at + count]

    def value(self) -> Any:
        """The JSON value at ``at``, followed by at least one character unless the text ends there:
        a value the window cuts (a number's digits) is never taken for the whole."""
        while True:
            try:
                item, end = _DECODER.raw_decode(self.text, self.at)
            except ValueError:
                if self.more():
                    continue
                raise _Unframed from None
            if end < len(self.text) or not self.more():
                self.at = end
                return item


def _checked(item: Any) -> None:
    """What a reading that only checks the framing makes of a value: nothing."""


def _framed_values(pieces: Iterator[bytes | memoryview], make: Callable[[Any], _T]) -> Iterator[_T]:
    """What ``make`` makes of each value of a tree's text made of ``pieces``; ``_Unframed`` where
    it is not framed as ``encode_tree`` frames it (whitespace included), as soon as that shows."""
    window = _TextWindow(pieces)
    if window.need(len(_OPEN_TEXT)) != _OPEN_TEXT:
        raise _Unframed
    window.at += len(_OPEN_TEXT)
    if window.need(len(_CLOSE_TEXT) + 1) == _CLOSE_TEXT:
        return
    scan = _SCAN
    while True:
        text, at = window.text, window.at
        while True:  # the window's values a comma follows in it, at one call each
            try:
                item, end = scan(text, at)
            except (ValueError, StopIteration):  # a value the window cuts, or none: ``value`` tells
                break
            if end >= len(text) or text[end] != ",":
                break
            yield make(item)
            at = end + 1
        window.at = at
        yield make(window.value())
        if window.need(1) == ",":
            window.at += 1  # a value must follow: a comma before the closing bracket is not JSON
            continue
        if window.need(len(_CLOSE_TEXT) + 1) != _CLOSE_TEXT:
            raise _Unframed
        return


def _parsed_whole(document: bytes | str) -> list[Node]:
    """One ``json.loads`` of a tree, then its nodes: what any other parse of it must agree with."""
    return [Node.from_json(item) for item in json.loads(document)["nodes"]]


def _node_by_node(text: str) -> Iterator[Node]:
    """``{"nodes":[`` values separated by single commas ``]}``, exactly: then the whole is valid
    JSON and these are its nodes; ``ValueError`` at anything else (whitespace included). The whole
    text's twin of ``_framed_values``: a small tree through the window cost 0.7 µs a node more
    (planning the node tree's 60,000 entries: 0.37 → 0.41 s)."""
    at, end = len(_OPEN_TEXT), len(text) - len(_CLOSE_TEXT)
    if at == end:
        return
    scan, make = _SCAN, Node.from_json
    while True:
        try:
            item, at = scan(text, at)
        except StopIteration:
            raise ValueError("not a JSON value") from None
        yield make(item)
        if at == end:
            return
        if at > end or text[at] != ",":
            raise ValueError("not one node after another")
        at += 1


@dataclass(frozen=True)
class TreeEntry:
    """What browsing a restore point shows: an absolute path inside the snapshot plus basic metadata."""

    path: str
    type: str
    size: int
    mode: int
    mtime: datetime

    @classmethod
    def of(cls, path: str, node: Node) -> TreeEntry:
        return cls(path, node.type, node.size, node.mode, datetime.fromtimestamp(node.mtime_ns / 1e9, UTC))

    def to_json(self) -> dict[str, Any]:
        """The entry as a message or API carries it: ``path`` displayed, ``path_b64`` when not UTF-8."""
        return {
            **path_fields(self.path),
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
            "mtime": self.mtime.isoformat(),
        }
