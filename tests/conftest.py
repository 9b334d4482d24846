"""Shared test setup: CPU only, one thread, no network, tiny data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def s3_server():
    """One real S3 server (moto) on 127.0.0.1 for the whole session, started on first use (tests/_s3.py)."""
    from _s3 import MotoServer

    server = MotoServer.start()
    yield server
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch):
    """`s3://<new bucket>` on the session's S3 server, with the AWS variables pointing at it (also inherited by
    subprocesses); fsspec's cached filesystems are dropped so every test starts clean."""
    import s3fs

    from _s3 import new_bucket, s3fs_filesystem

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{new_bucket(s3fs_filesystem())}"
