"""The agents' S3 session policy, evaluated (docs/security.md).

moto with IAM authentication enforces identity policies but **not session policies** (observed,
/work notes: moto 5.x): a request moto accepts here proves nothing about the policy. So the policy
document we emit is evaluated by ``policy_eval`` (an evaluator of the subset we emit, tested
first), and the requests a real backup makes are recorded on moto and evaluated against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.providers.aws.policy_eval import PolicyError, Request, allows, decide
from cloudkeep.providers.aws.provider import AwsProvider
from cloudkeep.providers.aws.storage import session_policy
from cloudkeep.repo import Repository, backup_files
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree

B = "arn:aws:s3:::bkt"
POLICY = session_policy("bkt", "repo/writers/m1/", "repo")


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# -- the evaluator ---------------------------------------------------------------------------


def test_wildcards_in_actions_ignore_case_in_resources_do_not() -> None:
    policy = doc({"Effect": "Allow", "Action": "s3:Get*", "Resource": f"{B}/a?/*"})
    assert allows(policy, ("s3:GetObject", f"{B}/ab/x"))
    assert allows(policy, ("S3:getobject", f"{B}/ab/x/y"))
    assert not allows(policy, ("s3:GetObject", f"{B}/AB/x"))
    assert not allows(policy, ("s3:GetObject", f"{B}/abc/x"))  # ? is one character
    assert not allows(policy, ("s3:PutObject", f"{B}/ab/x"))
    assert not allows(policy, ("s3:GetObject", f"{B}/a.b"))  # '.' is literal, not a regex


def test_explicit_deny_wins_and_nothing_allowed_is_denied() -> None:
    policy = doc(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": ["s3:Delete*"], "Resource": [f"{B}/*"]},
    )
    assert decide(policy, Request("s3:DeleteObject", f"{B}/k")) == "explicit-deny"
    assert decide(policy, Request("s3:DeleteObject", "arn:aws:s3:::other/k")) == "allow"
    only = doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{B}/*"})
    assert decide(only, Request("s3:PutObject", f"{B}/k")) == "implicit-deny"


def test_string_like_conditions_and_absent_keys() -> None:
    policy = doc(
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": B,
         "Condition": {"StringLike": {"s3:prefix": ["repo/*", "repo"]}}},
        {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": B,
         "Condition": {"StringNotEquals": {"aws:SourceVpc": "vpc-1"}}},
    )  # fmt: skip
    inside = {"s3:prefix": "repo/x", "aws:SourceVpc": "vpc-1"}
    assert allows(policy, ("s3:ListBucket", B, inside))
    assert not allows(policy, ("s3:ListBucket", B, {**inside, "s3:prefix": "other/"}))
    assert not allows(policy, ("s3:ListBucket", B, {"aws:SourceVpc": "vpc-1"}))  # no prefix: no match
    assert decide(policy, Request("s3:ListBucket", B, {"s3:prefix": "repo"})) == "explicit-deny"


def test_bool_null_and_if_exists_conditions() -> None:
    policy = doc(
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{B}/*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{B}/*",
         "Condition": {"StringNotEquals": {"s3:if-none-match": "*"},
                       "BoolIfExists": {"s3:ObjectCreationOperation": "true"}}},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{B}/nulls/*",
         "Condition": {"Null": {"s3:x-amz-copy-source": "false"}}},
    )  # fmt: skip
    put = {"s3:ObjectCreationOperation": "true"}
    assert not allows(policy, ("s3:PutObject", f"{B}/k", put))
    assert not allows(policy, ("s3:PutObject", f"{B}/k"))  # key absent: IfExists holds, deny applies
    assert not allows(policy, ("s3:PutObject", f"{B}/k", {**put, "s3:if-none-match": "etag"}))
    assert allows(policy, ("s3:PutObject", f"{B}/k", {**put, "s3:if-none-match": "*"}))
    assert allows(policy, ("s3:PutObject", f"{B}/k", {"s3:ObjectCreationOperation": "FALSE"}))  # any case
    creation = {**put, "s3:if-none-match": "*"}
    assert allows(policy, ("s3:PutObject", f"{B}/nulls/k", creation))  # Null false: key must be present
    assert not allows(policy, ("s3:PutObject", f"{B}/nulls/k", {**creation, "s3:x-amz-copy-source": "b/k"}))


@pytest.mark.parametrize(
    "bad",
    [
        {"Version": "2008-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
        doc({"Effect": "Allow", "NotAction": "s3:Get*", "Resource": "*"}),
        doc({"Effect": "Allow", "Action": "*", "Resource": "*", "Principal": "*"}),
        doc({"Effect": "Maybe", "Action": "*", "Resource": "*"}),
        doc({"Effect": "Allow", "Action": [], "Resource": "*"}),
        doc({"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"a": "b"}}}),
        *(
            doc({"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition})
            for condition in (
                {"Bool": {"a": "yes"}},
                {"NullIfExists": {"a": "true"}},
                {"Null": {"a": ["true", "false"]}},
                {"DateLessThan": {"a": "b"}},
            )
        ),
    ],
)
def test_anything_outside_the_subset_is_refused_not_guessed(bad: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        decide(bad, Request("s3:GetObject", f"{B}/k"))


# -- the policy we emit ----------------------------------------------------------------------


DESTROY_OR_LOCK = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention",
                   "s3:PutObjectLegalHold", "s3:BypassGovernanceRetention", "s3:PutObjectAcl")  # fmt: skip


def test_compromised_machine_s3_policy_denies_delete_and_locks() -> None:
    for key in ("repo/writers/m1/data/ab/p", "repo/writers/m2/snapshots/s", "repo/index/i", "repo/config"):
        for action in DESTROY_OR_LOCK:
            assert decide(POLICY, Request(action, f"{B}/{key}")) == "explicit-deny", (action, key)
    for action in ("s3:PutBucketObjectLockConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucket",
                   "s3:PutLifecycleConfiguration", "s3:PutBucketVersioning"):  # fmt: skip
        assert decide(POLICY, Request(action, B)) == "explicit-deny", action


def test_compromised_machine_s3_policy_confines_writes_to_its_prefix() -> None:
    create = {"s3:ObjectCreationOperation": "true", "s3:if-none-match": "*"}
    assert allows(POLICY, ("s3:PutObject", f"{B}/repo/writers/m1/data/ab/p", create))
    for key in ("repo/writers/m2/data/ab/p", "repo/writers/m10/x", "repo/config", "repo/keys/k",
                "repo/index/i", "repo/snapshots/s", "repo/writers/m1", "other/writers/m1/x"):  # fmt: skip
        assert not allows(POLICY, ("s3:PutObject", f"{B}/{key}", create)), key
    assert not allows(POLICY, ("s3:GetObject", f"{B}/elsewhere/secret"))  # reads: the repository only
    assert json.loads(json.dumps(POLICY)) == POLICY and len(json.dumps(POLICY)) < 2048  # STS's limit


def test_compromised_machine_cannot_overwrite_own_pack_s3() -> None:
    """Inside its own prefix an agent may create, never replace: a PUT or a multipart completion
    without ``If-None-Match: *`` is denied; the multipart steps that cannot carry it are not."""
    own = f"{B}/repo/writers/m1/data/ab/p"
    creation = {"s3:ObjectCreationOperation": "true"}
    for key in (own, f"{B}/repo/writers/m1/snapshots/s", f"{B}/repo/writers/m1/index/i"):
        assert decide(POLICY, Request("s3:PutObject", key, creation)) == "explicit-deny", key
        assert decide(POLICY, Request("s3:PutObject", key)) == "explicit-deny", key  # fails closed
        assert allows(POLICY, ("s3:PutObject", key, {**creation, "s3:if-none-match": "*"})), key
    replace = {**creation, "s3:if-match": "etag"}
    assert decide(POLICY, Request("s3:PutObject", own, replace)) == "explicit-deny"
    parts = {"s3:ObjectCreationOperation": "false"}  # CreateMultipartUpload, UploadPart
    assert allows(POLICY, ("s3:PutObject", own, parts))


class Recorder:
    """Every S3 request a store's client makes, as (IAM action, resource ARN, context)."""

    ACTIONS = {
        "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
        "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
        "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "ListObjectsV2": "s3:ListBucket",
        "HeadBucket": "s3:ListBucket", "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
        "GetBucketLocation": "s3:GetBucketLocation", "DeleteObject": "s3:DeleteObject",
        "PutObjectRetention": "s3:PutObjectRetention", "GetObjectRetention": "s3:GetObjectRetention",
    }  # fmt: skip

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        action = self.ACTIONS[model.name]  # an operation not listed here fails the test: map it
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        resource = f"{bucket}/{params['Key']}" if "Key" in params else bucket
        context = {"s3:prefix": params["Prefix"]} if "Prefix" in params else {}
        if action == "s3:PutObject":  # the keys AWS's conditional-write policies use
            creation = model.name in ("PutObject", "CompleteMultipartUpload")
            context["s3:ObjectCreationOperation"] = "true" if creation else "false"
            if "IfNoneMatch" in params:
                context["s3:if-none-match"] = params["IfNoneMatch"]
        self.requests.append(Request(action, resource, context))


def test_the_session_policy_allows_everything_a_backup_does(
    aws: AwsProvider, unique_name: str, tmp_path: Path
) -> None:
    """A real backup with the agent's credentials on moto (which ignores the policy): every request
    it needs is one the policy allows."""
    location = f"{unique_name}/repo"
    aws.storage.ensure_container(location)
    Repository.create(
        aws.storage.open_store(location), PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS
    )
    creds = aws.storage.scoped_credentials(location, "writers/m1/", expires_seconds=900)
    store = creds.open_store()
    recorder = Recorder()
    store.client.meta.events.register("provide-client-params.s3.*", recorder)  # type: ignore[attr-defined]
    backup_files(Repository.open(store, PASSWORD, writer_prefix="writers/m1/"), [write_tree(tmp_path / "a")])
    policy = session_policy(unique_name, "repo/writers/m1/", "repo")
    actions = {r.action for r in recorder.requests}
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket"} <= actions
    creations = [r for r in recorder.requests if r.context.get("s3:ObjectCreationOperation") == "true"]
    kinds = ("/data/", "/index/", "/snapshots/", "/sessions/")
    assert set(kinds) == {kind for r in creations for kind in kinds if kind in r.resource}
    assert all(r.context.get("s3:if-none-match") == "*" for r in creations), creations  # create-only
    refused = [r for r in recorder.requests if not allows(policy, r)]
    # Only the session's attempt to remove its own markers, which moto let through; under the
    # policy it is refused and the session writes its end marker instead (proved on Azurite).
    sessions = f"arn:aws:s3:::{unique_name}/repo/writers/m1/sessions/"
    assert all(r.action == "s3:DeleteObject" and r.resource.startswith(sessions) for r in refused), refused
