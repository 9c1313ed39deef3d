"""Smoke tests proving each peer fixture really works."""

from __future__ import annotations

import boto3
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient
from sqlalchemy import create_engine, text

from tests.support.peers import Azurite, MotoServer, Postgres


def _client(moto: MotoServer, service: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        service, endpoint_url=moto.endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def test_moto_s3_round_trip(moto_server: MotoServer, unique_name: str) -> None:
    s3 = _client(moto_server, "s3")
    s3.create_bucket(Bucket=unique_name)
    s3.put_object(Bucket=unique_name, Key="k", Body=b"hello")
    assert s3.get_object(Bucket=unique_name, Key="k")["Body"].read() == b"hello"


def test_moto_sqs_round_trip(moto_server: MotoServer, unique_name: str) -> None:
    sqs = _client(moto_server, "sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="ping")
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in got] == ["ping"]


def test_azurite_blob_round_trip(azurite: Azurite, unique_name: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(unique_name)
    container.upload_blob("k", b"hello")
    assert container.download_blob("k").readall() == b"hello"


def test_azurite_queue_round_trip(azurite: Azurite, unique_name: str) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, unique_name)
    queue.create_queue()
    queue.send_message("ping")
    assert [m.content for m in queue.receive_messages()] == ["ping"]


def test_postgres_sql_round_trip(postgres: Postgres) -> None:
    engine = create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(text("create table t (v int)"))
        conn.execute(text("insert into t values (42)"))
        assert conn.execute(text("select v from t")).scalar_one() == 42
    engine.dispose()
