"""Fixtures that start an S3-compatible server (moto) on loopback and point the standard AWS settings at it.

`s3_server` is one moto server for the whole session (real HTTP on 127.0.0.1, nothing patched in boto3);
`s3_env` sets only the standard AWS environment variables for one test and returns a fresh bucket's name;
`s3_output` gives an `s3://bucket/prefix` output inside that bucket; `s3_client` is a boto3 client built
from that same environment, for assertions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

S3_REGION = "us-east-1"  # the one region where CreateBucket needs no LocationConstraint

# Variables that would let a developer's own AWS setup leak into a test; removed for each test.
_FOREIGN_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port for the test session; yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _s3_admin(s3_server: str):
    """One client for creating buckets: building a boto3 client costs ~0.2 s, too much for every test."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=S3_REGION
    )
    return session.client("s3", endpoint_url=s3_server)


@pytest.fixture
def s3_env(s3_server: str, _s3_admin, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> str:
    """Point the standard AWS environment at the loopback server, create a fresh bucket, return its name."""
    for name in _FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # Files that do not exist, so a developer's ~/.aws cannot add profiles or endpoints.
    missing = tmp_path_factory.mktemp("aws") / "absent"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"pg-{uuid.uuid4().hex[:20]}"
    _s3_admin.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_output(s3_env: str) -> str:
    """An output location inside the fresh bucket, as a user would pass it: `s3://bucket/prefix`."""
    return f"s3://{s3_env}/runs/demo"


@pytest.fixture
def s3_client(s3_env: str):
    """A boto3 S3 client configured only by the environment that `s3_env` set."""
    return boto3.session.Session().client("s3")
