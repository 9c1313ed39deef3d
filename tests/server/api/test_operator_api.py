"""What an operator scrapes and reads: ``/metrics`` from a running server, the offline API docs."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tests.server.fixtures import LiveServer, Seeded, add_machine

from cloudkeep.server import metrics
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, JobSession


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_scraped_from_a_running_server(
    ctx: ServerContext, seeded: Seeded, live_server: LiveServer, reader_token: str
) -> None:
    """State gauges come from the database at scrape time; event metrics count what happened."""
    web = add_machine(ctx, seeded.group, "web")
    quiet = add_machine(ctx, seeded.group, "quiet")
    add_machine(ctx, seeded.group, "db", status="failed")
    now = datetime.now(UTC)
    with ctx.db() as db:
        for machine, age in ((web, 1), (quiet, 3600)):
            row = db.get(DiscoveredMachine, machine)
            assert row is not None
            row.last_heartbeat_at = now - timedelta(seconds=age)
        db.add(JobSession(kind="backup", state="success"))
        db.add(JobSession(kind="backup", state="success"))
        db.add(JobSession(kind="backup", state="warning"))
    before = _samples(metrics.render(metrics.build_registry(ctx)).decode())
    # event metrics are process-wide and sessions of earlier tests may still end in the background:
    # this test's observations carry labels of their own
    metrics.record_session("scrape-test", "success", 12.5, bytes_read=4000, bytes_uploaded=1000)
    metrics.record_session("backup", "success", 1.0, bytes_read=4000, bytes_uploaded=1000)
    metrics.record_command("scrape-test", True, 0.3)

    refused = httpx.get(f"{live_server.url}/metrics", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthenticated"
    answer = httpx.get(
        f"{live_server.url}/metrics", headers={"Authorization": f"Bearer {reader_token}"}, timeout=10
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    got = _samples(answer.text)

    assert got[("cloudkeep_sessions", (("kind", "backup"), ("state", "success")))] == 2
    assert got[("cloudkeep_sessions", (("kind", "backup"), ("state", "warning")))] == 1
    assert got[("cloudkeep_machines", (("status", "deployed"),))] == 2
    assert got[("cloudkeep_machines", (("status", "failed"),))] == 1
    # only late machines (heartbeat older than the limit) have a series of their own
    age = got[("cloudkeep_machine_heartbeat_age_seconds", (("machine", quiet), ("name", "quiet")))]
    assert 3600 <= age < 3600 + 60
    assert not any(k[0] == "cloudkeep_machine_heartbeat_age_seconds" and ("name", "web") in k[1] for k in got)
    assert got[("cloudkeep_machines_heartbeat_late", ())] == 1
    assert got[("cloudkeep_machines_by_heartbeat_age", (("le", "+Inf"),))] == 2
    assert got[("cloudkeep_machine_heartbeat_oldest_age_seconds", ())] == age

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return got[key] - before.get(key, 0.0)

    assert grew("cloudkeep_backup_bytes_total") >= 1000  # backup sessions only count bytes
    assert grew("cloudkeep_backup_read_bytes_total") >= 4000
    test_ok = {"kind": "scrape-test", "state": "success"}
    assert grew("cloudkeep_session_duration_seconds_count", **test_ok) == 1
    assert grew("cloudkeep_session_duration_seconds_sum", **test_ok) == 12.5
    assert grew("cloudkeep_session_duration_seconds_bucket", **test_ok, le="5.0") == 0
    queue_ok = {"channel": "scrape-test", "outcome": "ok"}
    assert grew("cloudkeep_command_round_trip_seconds_count", **queue_ok) == 1
    assert grew("cloudkeep_command_round_trip_seconds_bucket", **queue_ok, le="0.5") == 1
    assert grew("cloudkeep_command_round_trip_seconds_bucket", **queue_ok, le="0.25") == 0


def test_queue_depth_is_reported_where_the_queue_offers_it(ctx: ServerContext) -> None:
    registry = metrics.build_registry(ctx, queue_depths=lambda: {"ck-server-q": 7})
    got = _samples(metrics.render(registry).decode())
    assert got[("cloudkeep_server_queue_depth", (("queue", "ck-server-q"),))] == 7


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_api_docs_need_no_internet(api: TestClient) -> None:
    """The Swagger UI page loads its script, style and icon from this server, which serves them."""
    page = api.get("/api/v1/docs")
    assert page.status_code == 200
    parser = _Links()
    parser.feed(page.text)
    assert len(parser.urls) >= 3
    script_urls = re.findall(r"url:\s*'([^']+)'", page.text)
    assert script_urls == ["/api/v1/openapi.json"]
    for url in parser.urls + script_urls:
        assert url.startswith("/"), f"docs page loads {url} from elsewhere"
        served = api.get(url)
        assert served.status_code == 200 and len(served.content) > 100, url
    assert "http://" not in page.text and "https://" not in page.text
    bundle = next(u for u in parser.urls if u.endswith("swagger-ui-bundle.js"))
    assert "SwaggerUIBundle" in api.get(bundle).text


def test_openapi_documents_the_error_shape_and_typed_job_fields(api: TestClient) -> None:
    spec = api.get("/api/v1/openapi.json").json()
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert {"type", "message", "hint"} <= set(detail["properties"])
    get_job = spec["paths"]["/api/v1/jobs/{ref}"]["get"]
    for status in ("401", "404", "422"):
        schema = get_job["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # the 422 FastAPI never sends here
    job_fields = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert "JobOptions" in str(job_fields["options"])
    schedule = str(job_fields["schedule"])
    assert "cron" in schedule and "daily" in schedule and "timezone" in schedule


def test_every_operation_is_described(api: TestClient) -> None:
    from cloudkeep.server.api.descriptions import DESCRIPTIONS

    spec = api.get("/api/v1/openapi.json").json()
    undescribed = [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if not operation.get("description")
    ]
    assert undescribed == []
    operations = {(m.upper(), p.removeprefix("/api/v1")) for p, ops in spec["paths"].items() for m in ops}
    assert set(DESCRIPTIONS) <= operations, "entries for routes that no longer exist"


def test_request_examples_in_the_spec_are_valid_bodies() -> None:
    from cloudkeep.server.scheduling.schedule import validate_schedule
    from cloudkeep.server.scheduling.schedule_spec import ScheduleSpec
    from cloudkeep.server.services import schemas

    for model in (schemas.CredentialCreate, schemas.RepositoryCreate, schemas.ProtectionGroupCreate,
                  schemas.JobCreate):  # fmt: skip
        examples = model.model_json_schema()["examples"]
        assert examples, model.__name__
        for example in examples:
            model.model_validate(example)
    for example in ScheduleSpec.model_json_schema()["examples"]:
        validate_schedule(example)


def test_swagger_ui_renders_the_spec_in_headless_chromium(live_server: LiveServer) -> None:
    """The page a person opens: Swagger UI (served by the server) draws every operation."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", f"{live_server.url}/api/v1/docs"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "Failed to load API definition" not in dom
    assert "opblock-summary-path" in dom  # the operations were drawn from the spec
    assert "/api/v1/jobs/{ref}" in dom and "Backup server for cloud machines." in dom
