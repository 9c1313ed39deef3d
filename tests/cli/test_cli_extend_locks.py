"""`cloudkeep repository extend-locks`: through the CLI's embedded mode (S3 runs in
tests/server/test_jobs_lock_generations.py; a local folder has no locks to extend)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_cli_core import SECRET, Invoke, ok, run  # noqa: F401  (run is a fixture)

PASSWORD = "correct-horse-battery"


def test_extend_locks_of_a_repository_without_generations_says_why(
    run: Invoke,  # noqa: F811
    tmp_path: Path,
) -> None:
    ok(run("credential", "add", "lab", "--provider", "local", "--lab-dir", str(tmp_path / "lab"),
           "--secret", "api_key", input=f"{SECRET}\n"))  # fmt: skip
    ok(run("repository", "add", "main", "--location", "b", "--credential", "lab", "--password-stdin",
           input=f"{PASSWORD}\n"))  # fmt: skip
    refused = run("repository", "extend-locks", "main")
    assert refused.exit_code == 2, refused.output
    assert "does not use immutability by generations" in refused.output
