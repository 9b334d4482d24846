"""A real S3 server on the loopback address for the tests: moto's server (`python -m moto.server`) in a subprocess.

One server per test session (the `s3_server` fixture in conftest.py); each test gets its own bucket and the AWS
variables that point boto/s3fs/tensorstore at it (`s3_env`), exactly as a user would set them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass


@dataclass
class MotoServer:
    endpoint: str
    proc: subprocess.Popen

    @classmethod
    def start(cls, timeout: float = 60.0) -> "MotoServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                return cls(endpoint, proc)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"moto server did not start on {endpoint} (exit code {proc.poll()})")
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def env(self) -> dict[str, str]:
        """What a user of an S3-compatible server sets (credentials are moto's dummies)."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}


def new_bucket(fs) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name


def s3fs_filesystem():
    """A fresh (uncached) synchronous s3fs filesystem configured from the environment, for test set-up and checks."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)

