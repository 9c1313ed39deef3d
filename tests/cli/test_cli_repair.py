"""`cloudkeep repository repair`: through the CLI's embedded mode down to the repository format."""

from __future__ import annotations

import json
from pathlib import Path

from cloudkeep.repo import Repository
from cloudkeep.server.context import ServerContext
from tests.cli.test_cli_core import SECRET, Invoke, ok, run  # noqa: F401  (run is a fixture)

PASSWORD = "correct-horse-battery"


def test_check_names_a_damaged_index_file_and_repair_sets_it_aside(
    run: Invoke,  # noqa: F811
    tmp_path: Path,
    ctx: ServerContext,
) -> None:
    ok(run("credential", "add", "lab", "--provider", "local", "--lab-dir", str(tmp_path / "lab"),
           "--secret", "api_key", input=f"{SECRET}\n"))  # fmt: skip
    ok(run("repository", "add", "main", "--location", "b", "--credential", "lab", "--password-stdin",
           input=f"{PASSWORD}\n"))  # fmt: skip
    (credential,) = json.loads(ok(run("credential", "list", "--json")))["items"]
    store = ctx.provider_for(credential["id"]).storage.open_store("b")
    assert Repository.open(store, PASSWORD).index_files == set()
    store.put("index/" + "ab" * 16, b"not an index file")

    checked = run("repository", "check", "main", "--json")
    assert checked.exit_code == 1 and f"bad-index: index/{'ab' * 16}" in checked.output

    repaired = json.loads(ok(run("repository", "repair", "main", "--json")))
    assert repaired["moved_aside"] == [f"index/{'ab' * 16}"] and repaired["changed"]
    assert store.stat(f"lost+found/index/{'ab' * 16}") is not None
    assert json.loads(ok(run("repository", "check", "main", "--json")))["ok"]
    again = json.loads(ok(run("repository", "repair", "main", "--json")))
    assert not again["changed"]
