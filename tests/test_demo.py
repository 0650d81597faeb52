"""`gpr demo` on the tiny preset: report.md with the business table and its PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from gpr.core.config import load_config
from gpr.demo import POLICIES, run_demo
from tests.conftest import SHARED, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_tiny_writes_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_demo(load_config("tiny"), out, SHARED, beauty=False)

    report = out / "report.md"
    assert report.is_file() and res["report"] == str(report)
    text = report.read_text()
    assert "| policy | RPM | CTR | CTCVR | GMV / mille | RPM vs cascade |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for name in POLICIES:
        assert any(r.startswith(f"| {name} |") for r in rows), name
    assert "| cascade |" in text and "reference" in text
    assert "MTP pre-training only" in text and "no HEPO" in text
    for section in ("## World", "## Semantic IDs", "## GPR retrieval", "## Timings"):
        assert section in text

    for png in ("training_curve.png", "codebook_usage.png", "policies.png"):
        path = out / png
        assert f"]({png})" in text
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC

    assert set(res["business"]) == set(POLICIES)
    for r in res["business"].values():
        assert r["rpm"] >= 0 and 0 <= r["ctr"] <= 1 and 0 <= r["ctcvr"] <= 1
    saved = json.loads((out / "report.json").read_text())
    assert saved["business"]["cascade"]["rpm"] == res["business"]["cascade"]["rpm"]
    assert [s["step"] for s in saved["steps"]][:3] == [
        "generate world",
        "semantic IDs (world)",
        "train GPR (MTP)",
    ]
    steps = {s["step"] for s in saved["steps"]}
    assert {"train cascade (2nd process)", "evaluate GPR retrieval (test) (2nd process)"} <= steps
    assert "hitrate@100" in res["retrieval"] and "| hitrate@100 |" in text
    assert "`gpr demo --beauty` runs it" in text  # the Beauty part was off
    assert not list(out.glob(".*"))  # no temp files left behind


def test_demo_cli_has_beauty_flag() -> None:
    r = run_cli("demo", "--help")
    assert r.returncode == 0, r.stderr
    assert "--beauty" in r.stdout
