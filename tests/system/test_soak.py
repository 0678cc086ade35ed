"""The soak (bench/soak.py) for 60 seconds on the tiny model: the same script and mix as the
30-minute run (windows sliding, disconnects, stalled readers that resume or vanish, bad inputs,
stop sequences, solo re-runs), judged on correctness only (memory and latency are printed: timing
is not a pass/fail matter here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_minute_of_everything_at_once(tmp_path):
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--model", "tiny", "--clients", "24"]
    argv += [
        "--seconds",
        "60",
        "--think",
        "0.5",
        "--ramp",
        "0",
        "--stall",
        "10",
        "--reruns",
        "6",
        "--no-warmup",
        "--batch-invariant",
        "--no-timing-verdict",
        "--json",
        str(out),
    ]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["lost_or_duplicated"] == 0 and summary["problems"] == {}
    assert summary["five_xx"] == 0
    assert summary["reruns"] == 6 and summary["mismatches"] == []
    assert summary["slots_busy_at_end"] == 0 and summary["queued_at_end"] == 0
    # The mix happened: every kind was sent, windows slid, bad inputs were refused, clients left.
    assert set(summary["by_kind"]) == {"normal", "long", "disconnect", "stall", "bad", "stop"}
    assert set(summary["by_transport"]) == {"ws", "sse", "http"}
    outcomes = summary["by_outcome"]
    assert summary["windows_slid"] > 0 and summary["stopped_by_stop_sequence"] > 0
    assert outcomes.get("refused", 0) > 0 and outcomes.get("disconnected", 0) > 0
    assert outcomes.get("vanished", 0) > 0 and outcomes.get("stall_resumed", 0) > 0
