"""The benchmark script runs end to end on the tiny preset (a smoke test: no timing assertions)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--preset", "tiny", "--seconds", "8",
                           "--max-tokens", "4", "--scaling", "5,35", "--work", str(tmp_path / "work"),
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for side in ("ours", "reference_fp32", "reference_bf16"):
        assert r[side]["wall"] > 0 and r[side]["rss_mb"] > 0
    assert r["ours"]["json"]["audio_tokens"] == 300
    assert r["llm"]["embeddings_vs_tokens"] > 0 and r["llm"]["bandwidth_bound_tok_s"] > 0
    assert [s["seconds"] for s in r["scaling"]] == [5.0, 35.0]
    assert "| mufun-local (" in proc.stdout and "| reference fp32 |" in proc.stdout
    assert r["encoder"].split()[0] in ("ctranslate2", "onnxruntime", "openvino")


def test_bench_encoder_tiny(tmp_path, tiny_ckpt):
    out = tmp_path / "enc.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_encoder.py"), "--ckpt", str(tiny_ckpt),
                           "--windows", "1", "--repeat", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for row in ("transformers float32", "transformers bfloat16", "ctranslate2 int8", "ctranslate2 float32",
                "onnxruntime int8", "onnxruntime float32", "openvino bfloat16", "openvino float32"):
        assert r["seconds_per_window"][row] > 0, row
    assert r["hs32_rel_error"]["onnxruntime float32"] < 1e-5
    assert r["auto"] in r["seconds_per_window"] and "auto picks" in proc.stdout
