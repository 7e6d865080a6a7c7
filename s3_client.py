"""The one way this project builds an S3 client: the pipeline's ObjectStore and the review
console both call `s3_client()`, so they share one set of retry and timeout defaults and the
settings non-AWS servers need. Pure: no Dagster (the console must start without it).

Retries: botocore's standard mode retries a request that fails with a connection error,
timeout, 5xx or throttling; `max_attempts` counts every send (botocore's own "max_attempts"
key counts retries only). Backoff doubles from 50 ms with jitter (from 1 s when throttled), so
the default 10 sends wait at most ~25 s in all. The environment variables S3_MAX_ATTEMPTS,
S3_CONNECT_TIMEOUT_S and S3_READ_TIMEOUT_S override these defaults (resources/environments.py).
"""

from __future__ import annotations

import functools
import os

import boto3
import botocore.config

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_REGION = "us-east-1"


def s3_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    *,
    region: str = DEFAULT_REGION,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
):
    """The boto3 S3 client for these settings, shared within a process.

    Building a client costs tens of milliseconds and clients are thread-safe, so every caller
    in a process with the same settings gets the same one; a forked child builds its own
    instead of reusing its parent's connection pool."""
    return _client_of_process(
        endpoint_url, access_key, secret_key, region, max_attempts, connect_timeout_s, read_timeout_s, os.getpid()
    )


@functools.lru_cache(maxsize=32)
def _client_of_process(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str,
    max_attempts: int,
    connect_timeout_s: float,
    read_timeout_s: float,
    pid: int,
):
    del pid  # only part of the cache key
    options: dict = {
        "retries": {"mode": "standard", "total_max_attempts": max_attempts},
        "signature_version": "s3v4",
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
    }
    if endpoint_url is not None and "amazonaws.com" not in endpoint_url:
        # Virtual-host addressing needs DNS per bucket, which local servers lack.
        # botocore >= 1.36 adds CRC checksums to every request by default; several
        # S3-compatible servers reject or mishandle them, so send them only when
        # the operation requires one.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=botocore.config.Config(**options),
    )
