"""What each API operation does, for the OpenAPI spec (Swagger UI shows it under the operation).

Kept apart from the route modules so that they stay thin; ``describe(router)`` fills in the
description of every route that has none. A test checks that every operation ends up with one
and that no entry here names a route that no longer exists.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

_REF = " `ref` is an id, a unique id prefix, or a name."
_PAGE = " Paginated with `limit` / `offset`; `total` counts every match."
_SESSION = " Returns the session at once (202); follow it with `GET /sessions/{id}` or `/events`."

DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("GET", "/credentials"): "Cloud credentials (never their secrets)." + _PAGE,
    ("POST", "/credentials"): "Store a cloud credential; its secret fields are sealed with the master key "
    "and never returned. Provider options (region, endpoint_url, ssm_output_bucket …) are in "
    "docs/providers.md.",
    ("GET", "/credentials/{ref}"): "One credential, without its secret." + _REF,
    ("DELETE", "/credentials/{ref}"): "Remove a credential no repository or protection group uses (409 "
    "otherwise)." + _REF,
    ("POST", "/credentials/{ref}/test"): "Dry-run the documented permissions, check the provider's options "
    "and count the machines it sees. Always answers 200: `ok`, `missing_permissions`, `problems`, "
    "`error` and `hint` say what to fix." + _REF,
    ("GET", "/repositories"): "Backup and distribution repositories." + _PAGE,
    ("POST", "/repositories"): "Register (and by default initialise) a repository at a location of a "
    "credential's storage: `bucket[/prefix]`, `container[/prefix]` or a folder.",
    ("GET", "/repositories/{ref}"): "One repository." + _REF,
    ("DELETE", "/repositories/{ref}"): "Forget a repository no job or protection group uses; its stored "
    "data is left in place." + _REF,
    ("POST", "/repositories/{ref}/check"): "Check the repository's structure (and with `read_data`, every "
    "pack's content); reports the problems found." + _REF,
    ("POST", "/repositories/{ref}/repair"): "Repair what check found (rebuild indexes, drop unreadable "
    "packs from the index, …); `dry_run` lists what would change." + _REF,
    ("POST", "/repositories/{ref}/verify"): "Probe the object store behind the repository for the "
    "features cloudkeep relies on (conditional writes, ranges, multipart, agent credentials)." + _REF,
    ("GET", "/protection-groups"): "Protection groups: which machines of a credential are protected." + _PAGE,
    ("POST", "/protection-groups"): "Create a protection group (regions, machine ids, include/exclude "
    "tags, rescan schedule).",
    ("GET", "/protection-groups/{ref}"): "One protection group." + _REF,
    ("PATCH", "/protection-groups/{ref}"): "Change a protection group; fields left out stay as they "
    "are." + _REF,
    ("DELETE", "/protection-groups/{ref}"): "Remove a protection group no job uses." + _REF,
    ("POST", "/protection-groups/{ref}/rescan"): "Discover the group's machines and deploy the machine-side "
    "services where needed." + _SESSION + _REF,
    ("GET", "/machines"): "Discovered machines with their status and last heartbeat." + _PAGE,
    ("GET", "/machines/{ref}"): "One machine, with its deployment steps." + _REF,
    ("GET", "/jobs"): "Backup jobs with their schedule and next run." + _PAGE,
    ("POST", "/jobs"): "Create a backup job. `schedule` (daily, monthly, periodic, cron, after_job) and "
    "`options` are typed: an unknown or malformed field is refused with its name.",
    ("GET", "/jobs/{ref}"): "One job; `next_runs` lists the next starts in UTC and in the schedule's "
    "time zone." + _REF,
    ("PATCH", "/jobs/{ref}"): "Change a job; fields left out stay as they are, `clear_schedule` makes it "
    "manual." + _REF,
    ("DELETE", "/jobs/{ref}"): "Delete a job; its restore points stay in the catalog." + _REF,
    ("POST", "/jobs/{ref}/enable"): "Let the scheduler run the job again." + _REF,
    ("POST", "/jobs/{ref}/disable"): "Stop scheduled runs; manual starts still work." + _REF,
    ("POST", "/jobs/{ref}/start"): "Run the job now (all its machines, or `machines`)." + _SESSION + _REF,
    ("POST", "/jobs/{ref}/stop"): "Ask the job's running session to stop." + _REF,
    ("GET", "/sessions"): "Backup, rescan, restore and check sessions, newest first." + _PAGE,
    ("GET", "/sessions/{session_id}"): "One session with a page of its per-machine tasks (`limit`, "
    "`offset`), their progress and reasons, and `task_total` / `task_counts` over all of them.",
    ("POST", "/sessions/{session_id}/stop"): "Ask a running session to stop; machines not yet started "
    "are not started.",
    ("GET", "/restore-points"): "Restore points in the catalog (filter by job, machine, repository)." + _PAGE,
    ("GET", "/restore-points/{ref}/browse"): "List one folder of a restore point (`path`)." + _REF,
    ("GET", "/restore-points/{ref}"): "One restore point." + _REF,
    ("POST", "/restore-points/{ref}/restore-files"): "Restore files to a machine (in place or to a "
    "folder)." + _SESSION + _REF,
    ("POST", "/restore-points/{ref}/restore-volume"): "Restore a volume image to a machine's "
    "device." + _SESSION + _REF,
    ("GET", "/info"): "Server id, version, database, public key and object counts.",
    ("POST", "/server/rotate-key"): "Re-seal every stored secret under a new master key and retire the "
    "old one (admin).",
    ("GET", "/tokens"): "API tokens (never the tokens themselves)." + _PAGE,
    ("POST", "/tokens"): "Create an API token (admin or read-only); the token is in this answer only.",
    ("DELETE", "/tokens/{ref}"): "Revoke an API token at once." + _REF,
    ("GET", "/audit"): "The audit log of administrator changes, newest first (filter by actor, action "
    "prefix)." + _PAGE,
    ("POST", "/doctor"): "Test every credential (or one) like `POST /credentials/{ref}/test`.",
}


def describe(router: APIRouter) -> None:
    """Give every route of ``router`` (paths without the API prefix) that has no description its
    entry from ``DESCRIPTIONS``; call it before the router is included."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or route.description:
            continue
        for method in route.methods or ():
            text = DESCRIPTIONS.get((method, route.path))
            if text:
                route.description = text
