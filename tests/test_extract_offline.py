"""Offline `--extractor auto`: the local cache and HF_HUB_OFFLINE first, then ONE short request to the hub, and one
line saying so. Real `maskgen extract` subprocesses against a hub endpoint on 127.0.0.1 (HF_ENDPOINT) that hangs or
refuses; no network access is needed or used."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from maskgen.demo.synthetic import make_synthetic_dataset


class Hub:
    """A TCP endpoint on 127.0.0.1 that accepts connections and never answers ("hang"), or a closed port."""

    def __init__(self, mode: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        if mode == "refuse":
            self.sock.close()
        else:
            self.sock.listen(64)
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.connections:
            c.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_cases=3, size=16) / "pipeline.toml"


def _extract(dataset, out, hub_port, home, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}", "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "MASKGEN_HUB_TIMEOUT": "1", "OMP_NUM_THREADS": "1", **env_extra}
    for name in ("MASKGEN_ANATOMIX_WEIGHTS", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    env.update(env_extra)
    cmd = [sys.executable, "-m", "maskgen", "extract", "--dataset", str(dataset), "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _note(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "anatomix weights" in line]


@pytest.mark.parametrize("mode", ["hang", "refuse"])
def test_auto_asks_an_unreachable_hub_once_and_says_so_in_one_line(dataset, tmp_path, mode):
    hub = Hub(mode)
    try:
        done = _extract(dataset, tmp_path / "s.zarr", hub.port, tmp_path / "hf")
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr
    lines = _note(done.stderr)
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert "falling back to the 'mind' extractor" in line and f"127.0.0.1:{hub.port}" in line
    assert "tried once for 1 s" in line and "HF_HUB_OFFLINE=1" in line
    assert ("no answer" in line) if mode == "hang" else ("refused" in line.lower())
    if mode == "hang":
        assert len(hub.connections) == 1  # one request, no retries


def test_auto_offline_or_cached_never_asks_the_hub(dataset, tmp_path):
    hub = Hub("hang")
    try:
        done = _extract(dataset, tmp_path / "off.zarr", hub.port, tmp_path / "hf", HF_HUB_OFFLINE="1")
        assert done.returncode == 0, done.stderr
        line, = _note(done.stderr)
        assert "HF_HUB_OFFLINE is set, so the hub was not asked" in line
        assert hub.connections == []
        # weights in the local hub cache: used without asking the hub
        import torch

        from maskgen.extract.anatomix import AnatomixUNet

        snapshot = tmp_path / "hf" / "hub" / "models--neeldey--anatomix" / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc")
        torch.manual_seed(0)
        torch.save(AnatomixUNet(output_nc=4, ngf=4, num_downs=2).state_dict(), snapshot / "anatomix.pth")
        done = _extract(dataset, tmp_path / "cached.zarr", hub.port, tmp_path / "hf")
        assert done.returncode == 0, done.stderr
        assert _note(done.stderr) == [] and hub.connections == []
        assert "(anatomix features)" in done.stdout
    finally:
        hub.close()
