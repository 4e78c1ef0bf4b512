"""danet-bench --peers: a missing peer environment is a skipped row with the reason; with the peers'
environment installed (make peers), both peers serve the tiny model and are measured beside danet-serve."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.peers import DEFAULT_PYTHON, PEERS, PeerProcess, PeerUnavailable, start_peers

ARGS = ["--arch", "tiny", "--sizes", "32x48", "--iterations", "2", "--warmup", "1", "--rounds", "1"]
ARGS += ["--concurrency", "1,2", "--threads", "1", "--skip-eager"]


def _installed(kind: str) -> bool:
    if not DEFAULT_PYTHON.exists():
        return False
    done = subprocess.run([str(DEFAULT_PYTHON), "-c", f"import {kind}"], capture_output=True, timeout=120)
    return done.returncode == 0


def test_missing_peer_environment_is_reported_not_fatal(tmp_path: Path) -> None:
    with pytest.raises(PeerUnavailable, match="make peers"):
        PeerProcess("kserve", tmp_path / "no-python", tmp_path / "m.onnx", 1).probe_versions()
    running, failed = start_peers(list(PEERS), tmp_path / "m.onnx", 1, tmp_path / "no-python")
    assert running == [] and set(failed) == {"peer-kserve", "peer-litserve"}
    with pytest.raises(ValueError, match="peers are"):
        PeerProcess("triton", tmp_path / "no-python", tmp_path / "m.onnx", 1)


def test_run_with_unavailable_peers_lists_them_as_skipped(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [*ARGS, "--skip-server", "--peers", "litserve", "--peer-python", str(tmp_path / "none")]
    assert main([*argv, "--work-dir", str(tmp_path / "work"), "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["results"] if r["path"] == "peer-litserve"]
    assert rows and all(r["status"] == "skipped" and "make peers" in r["note"] for r in rows)


@pytest.mark.skipif(not all(_installed(kind) for kind in PEERS), reason="peers not installed (make peers)")
def test_peers_are_measured_beside_danet_serve(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [*ARGS, "--peers", ",".join(PEERS), "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    assert main(argv) == 0
    rows = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    for key in ("peer-kserve", "peer-litserve", "kserve", "http"):
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["latency_ms"]["n"] == 2 and set(rows[key]["throughput_rps"]) == {"1", "2"}
    assert "onnxruntime" in rows["peer-kserve"]["note"]  # versions are recorded
