"""A tree blob's bytes are its id's input: ``encode_tree`` builds them node by node (to hold less at
a large folder's peak), and they must stay those of one ``json.dumps`` of the whole tree, or every
unchanged folder would get a new tree id and be stored again."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudkeep.repo import tree
from cloudkeep.repo.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree, iter_tree


def _nodes() -> list[Node]:
    return [
        Node(name="zeta", type=FILE, mode=0o644, size=3, mtime_ns=1, content=[b"\x01" * 32, b"\x02" * 32]),
        Node(name="\u00e9t\u00e9 \u2603", type=FILE, mode=0o600, uid=1000, user="u", group="g", links=2),
        Node(name="raw-\udcff-name", type=FILE, xattrs={"user.b": b"\x00", "user.a": b"x"}, sparse=True),
        Node(name="dir", type=DIR, mode=0o755, subtree=b"\x03" * 32, inode=7, device=9),
        Node(name="link", type=SYMLINK, target='../\u2603 "quoted" \\', rdev=0),
        Node(name="", type=FILE),
    ]


def test_node_by_node_bytes_are_one_dump_of_the_whole_tree() -> None:
    nodes = _nodes()
    whole = {"nodes": [n.to_json() for n in sorted(nodes, key=lambda n: n.name)]}
    expected = json.dumps(whole, separators=(",", ":"), sort_keys=True).encode()
    assert encode_tree(nodes) == expected
    assert encode_tree([]) == b'{"nodes":[]}'
    assert [n.to_json() for n in decode_tree(encode_tree(nodes))] == whole["nodes"]


def test_nodes_given_in_name_order_are_encoded_as_they_come_and_give_the_same_bytes() -> None:
    nodes = sorted(_nodes(), key=lambda n: n.name)
    taken: list[str] = []

    def one_by_one() -> Iterator[Node]:
        for node in nodes:
            taken.append(node.name)
            yield node

    assert encode_tree(one_by_one(), ordered=True) == encode_tree(list(reversed(nodes)))
    assert taken == [n.name for n in nodes]
    with pytest.raises(ValueError, match="out of name order"):
        encode_tree(reversed(nodes), ordered=True)
    with pytest.raises(ValueError, match="out of name order"):  # a name twice: no tree holds that
        encode_tree([nodes[1], nodes[1]], ordered=True)


def test_a_pinned_node_encodes_as_stored_by_earlier_versions() -> None:
    node = Node(name="a", type=FILE, mode=0o644, size=1, mtime_ns=5, content=[b"\xab" * 2])
    assert encode_tree([node]) == (
        b'{"nodes":[{"content":["abab"],"mode":420,"mtime_ns":5,"name":"a","size":1,"type":"file"}]}'
    )


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # lone surrogates too
_int = st.integers(min_value=-(2**70), max_value=2**70)
_nodes_of_a_backup = st.builds(
    Node,
    name=_text,
    type=st.sampled_from([FILE, DIR, SYMLINK, "fifo"]),
    mode=_int,
    uid=_int,
    gid=_int,
    user=_text,
    group=_text,
    mtime_ns=_int,
    size=_int,
    inode=_int,
    device=_int,
    links=_int,
    rdev=_int,
    content=st.lists(st.binary(min_size=32, max_size=32), max_size=3),
    subtree=st.none() | st.binary(min_size=32, max_size=32),
    target=_text,
    xattrs=st.dictionaries(_text, st.binary(max_size=8), max_size=3),
    sparse=st.booleans(),
)
# What a hostile repository's tree decodes to: any JSON value in any field.
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_text, inner, max_size=2),
    max_leaves=4,
)


def _one_dump(nodes: list[Node]) -> bytes:
    whole = {"nodes": [n.to_json() for n in sorted(nodes, key=lambda n: n.name)]}
    return json.dumps(whole, separators=(",", ":"), sort_keys=True).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(_nodes_of_a_backup, max_size=4))
def test_the_direct_writer_gives_the_encoders_bytes(nodes: list[Node]) -> None:
    assert encode_tree(nodes) == _one_dump(nodes)


@settings(max_examples=300, deadline=None)
@given(
    _nodes_of_a_backup,
    st.sampled_from(["mode", "uid", "size", "links", "user", "name", "target", "type"]),
    _json_value,
)
def test_a_field_of_another_type_is_written_as_the_encoder_writes_it(
    node: Node, field: str, value: object
) -> None:
    """A node decoded from a repository (``repair`` writes such trees again) may hold anything."""
    setattr(node, field, value)
    try:
        expected = _one_dump([node])
    except (TypeError, ValueError):  # the encoder refuses it: so must encode_tree
        with pytest.raises((TypeError, ValueError)):
            encode_tree([node])
        return
    assert encode_tree([node]) == expected
    json.loads(expected)


@settings(max_examples=300, deadline=None)
@given(_nodes_of_a_backup)
def test_a_node_read_back_is_the_node_written(node: Node) -> None:
    assert Node.from_json(json.loads(json.dumps(node.to_json()))) == node


def test_a_node_of_a_name_and_a_type_only_has_every_other_field_at_its_default() -> None:
    """``from_json`` sets each field itself (no ``__init__``): a field it forgot would be unset."""
    node = Node.from_json({"name": "a", "type": FILE})
    default = Node(name="a", type=FILE)
    for field in dataclasses.fields(Node):
        assert getattr(node, field.name) == getattr(default, field.name), field.name
    assert node.content is not Node.from_json({"name": "b", "type": FILE}).content  # a list each


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"type": FILE}, KeyError),
        ({"name": "a"}, KeyError),
        ({"name": "a", "type": 3}, TypeError),
        ({"name": "a", "type": FILE, "user": None}, TypeError),
        ({"name": "a", "type": FILE, "content": ["zz"]}, ValueError),
        ({"name": "a", "type": FILE, "content": None}, TypeError),
        ({"name": "a", "type": DIR, "subtree": None}, TypeError),
        ({"name": "a", "type": FILE, "xattrs": []}, AttributeError),
        (["name", "type"], AttributeError),
    ],
)
def test_a_malformed_node_raises_what_a_tree_read_reports(item: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Node.from_json(item)  # type: ignore[arg-type]
    assert issubclass(error, tree.MALFORMED)


def _parsed_whole(data: bytes) -> list[Node] | type[Exception]:
    """What one ``json.loads`` of the blob gives (the reference ``decode_tree`` must agree with)."""
    try:
        return [Node.from_json(item) for item in json.loads(data)["nodes"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return type(exc)


def _decoded(data: bytes) -> list[Node] | type[Exception]:
    try:
        return decode_tree(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_nodes_of_a_backup, max_size=3),
    st.lists(
        st.tuples(
            st.integers(min_value=0), st.sampled_from([",", "]", "}", "[", "{", " ", '"', "1", "", "\\"])
        ),
        max_size=3,
    ),
)
def test_a_tree_parsed_node_by_node_is_the_tree_parsed_whole(
    nodes: list[Node], edits: list[tuple[int, str]]
) -> None:
    """Trees are read from a repository a writer (maybe a compromised machine) made: the node-by-node
    parse of a backup's trees must give what one parse of the whole blob gives, for the blob as
    written and for blobs one character off it (whitespace, a comma too many, a bracket, a quote)."""
    data = bytes(encode_tree(nodes))
    for position, char in edits:  # each: replace one character (or remove it, "")
        if data:
            at = position % len(data)
            data = data[:at] + char.encode() + data[at + 1 :]
    whole = _parsed_whole(data)
    assert _decoded(data) == whole
    assert _streamed(data) == _parsed_in_turn(data)
    if not edits:
        assert whole == sorted(nodes, key=lambda n: n.name) or isinstance(whole, type)


@pytest.mark.parametrize(
    "data",
    [
        b'{"nodes":[]}',
        b'{"nodes":[{"name":"a","type":"file"},]}',  # a comma too many: not JSON
        b'{"nodes":[{"name":"a","type":"file"}],"nodes":[{"name":"b","type":"file"}]}',  # the last wins
        b'{"nodes":[{"name":"a","type":"file"} ,{"name":"b","type":"file"}]}',
        b'{"nodes":[[1]}',  # a value that takes the closing bracket
        b'{"nodes":[{"name":"a","type":"file","name":"b"}]}',
        b'{"nodes":["a"]}',
        b'{"nodes":[{"name":"\\ud800","type":"file"}]}',  # a lone surrogate, escaped
        b'{"nodes":[{"name":"\xed\xa0\x80","type":"file"}]}',  # and as bytes (json.loads passes them)
        b'{"nodes":[{"name":"a","type":"file"}]}\n',
    ],
)
def test_blobs_the_node_by_node_parse_must_not_read_otherwise(data: bytes) -> None:
    assert _decoded(data) == _parsed_whole(data)
    assert _streamed(data) == _parsed_in_turn(data)


def _parsed_in_turn(data: bytes) -> tuple[list[Node], type[Exception] | None]:
    """One ``json.loads`` of the blob, then its nodes made in turn: those before the first that
    cannot be made, and that one's error (what ``iter_tree`` must give, node by node)."""
    nodes: list[Node] = []
    try:
        for item in json.loads(data)["nodes"]:
            nodes.append(Node.from_json(item))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return nodes, type(exc)
    return nodes, None


def _streamed(data: bytes) -> tuple[list[Node], type[Exception] | None]:
    """``iter_tree`` with every tree large enough to be streamed, read in pieces of one byte (a
    character's bytes split), of a few, and of one piece: the same in each."""
    results = [_streamed_in(data, piece) for piece in (1, 5, 2**20)]
    assert results[0] == results[1] == results[2], results
    return results[0]


def _streamed_in(data: bytes, piece: int) -> tuple[list[Node], type[Exception] | None]:
    nodes: list[Node] = []
    kept = tree.STREAM_TREE, tree.TREE_PIECE  # (not monkeypatch: hypothesis runs many examples)
    tree.STREAM_TREE, tree.TREE_PIECE = 0, piece
    try:
        for node in iter_tree(data):
            nodes.append(node)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return nodes, type(exc)
    finally:
        tree.STREAM_TREE, tree.TREE_PIECE = kept
    return nodes, None


def test_a_large_tree_is_never_held_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed tree is read twice, in pieces, and its text holds only what is not parsed yet:
    a few pieces and the node being parsed, not the tree (a folder of 200,000 messages held its
    plaintext and text at once, 43 MiB each). A node longer than a piece is parsed too."""
    monkeypatch.setattr(tree, "STREAM_TREE", 0)
    monkeypatch.setattr(tree, "TREE_PIECE", 512)
    nodes = [
        Node(name=f"m{i:04}", type=FILE, mode=0o644, size=i, content=[bytes([i % 256]) * 32])
        for i in range(2000)
    ]
    nodes.append(
        Node(name="big", type=FILE, content=[bytes([i]) * 32 for i in range(100)])
    )  # ~6.7 KB of text
    data = bytes(encode_tree(nodes))
    readings: list[int] = []
    held: list[int] = []
    more = tree._TextWindow.more

    def counted_more(self: tree._TextWindow) -> bool:
        grew = more(self)
        held.append(len(self.text))
        return grew

    class Blob(tree._Plain):
        def whole(self) -> bytes:
            raise AssertionError("a large tree read whole")

        def pieces(self, size: int) -> Iterator[memoryview]:
            readings.append(size)
            return super().pieces(size)

    monkeypatch.setattr(tree._TextWindow, "more", counted_more)
    assert list(tree.iter_tree_blob(Blob(data))) == sorted(nodes, key=lambda n: n.name)
    assert readings == [512, 512] and len(data) > 200 * 512
    assert 8 * 512 < max(held) < 4 * 7000  # the long node, doubled a few times; never the tree
    assert sorted(held)[len(held) // 2] < 3 * 512


def test_a_large_tree_streamed_gives_the_nodes_before_a_bad_one_then_its_error() -> None:
    good = [Node(name=f"m{i:03}", type=FILE, mode=0o644, content=[bytes(32)]) for i in range(5)]
    text = encode_tree(good).decode()
    bad = text.replace('"m002"', '"m002","user":7', 1).encode()  # a name the owner field cannot be
    assert _streamed(bytes(encode_tree(good))) == (good, None)
    assert _streamed(bad) == (good[:2], TypeError)
    with pytest.raises(TypeError):
        decode_tree(bad)  # the whole tree: no node, the same error
