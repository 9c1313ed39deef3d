"""A tree blob's bytes are its id's input: ``encode_tree`` builds them node by node (to hold less at
a large folder's peak), and they must stay those of one ``json.dumps`` of the whole tree, or every
unchanged folder would get a new tree id and be stored again."""

from __future__ import annotations

import json

from cloudkeep.repo.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree


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


def test_a_pinned_node_encodes_as_stored_by_earlier_versions() -> None:
    node = Node(name="a", type=FILE, mode=0o644, size=1, mtime_ns=5, content=[b"\xab" * 2])
    assert encode_tree([node]) == (
        b'{"nodes":[{"content":["abab"],"mode":420,"mtime_ns":5,"name":"a","size":1,"type":"file"}]}'
    )
