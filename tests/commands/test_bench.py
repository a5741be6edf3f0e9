"""The benchmark script runs end to end on the tiny preset (a smoke test: no timing assertions)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


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


def test_the_serve_load_and_soak_scripts_run_as_documented(tmp_path, demo_home):
    """Both with their default model (the demo's, whatever weight type it has), briefly."""
    import os
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, MUFUN_HOME=str(demo_home), TMPDIR=str(tmp_path / "tmp"))
    load = subprocess.run([sys.executable, str(SCRIPTS / "load_serve.py"), "--seconds", "3", "--concurrency", "1", "2",
                           "--requests", "2", "--max-tokens", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert load.returncode == 0, load.stderr[-3000:]
    assert "| 2 |" in load.stdout
    soak = subprocess.run([sys.executable, str(SCRIPTS / "soak_serve.py"), "--minutes", "0.15", "--clients", "2",
                           "--seconds", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert soak.returncode == 0, soak.stdout[-2000:] + soak.stderr[-2000:]
    assert "5xx: 0; temporary files left: 0" in soak.stdout
    assert [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("ray")] == []  # nothing left behind


def test_bench_library_tiny(tmp_path):
    out = tmp_path / "lib.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_library.py"), "--preset", "tiny", "--songs", "2",
                           "--lengths", "20,40", "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(r["runs"]) == 3 and all(run["songs_per_hour"] > 0 for run in r["runs"].values())
    assert "| today: --tags (free-text JSON) |" in proc.stdout and "30,000 songs" in proc.stdout
    tags = [json.loads(line) for line in (tmp_path / "work" / "run-1.jsonl").read_text().splitlines()]
    assert len(tags) == 2 and all(t["error"] is None and "genre_score" in t["parsed"] for t in tags)


def test_bench_rank_tiny(tmp_path, tiny_q4):
    """Its trie row counts are what LLM.score_continuations feeds (the rows it reports equal
    them), and ranking all five fields together reads no audio again."""
    out = tmp_path / "rank.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_rank.py"), "--model", str(tiny_q4), "--seconds", "20",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    assert 300 < stages[1]["rows"] < 500  # one window's 300 audio rows and the ~100-token prompt before them
    ranked = stages[2:]
    assert [s["stage"].split(" (")[0] for s in ranked] == [
        "rank genre alone: 15 terms", "rank mood alone: 56 terms", "rank instruments alone: 40 terms",
        "rank tempo_feel alone: 5 terms", "rank vocals alone: 5 terms", "rank all five together"]
    for s in ranked:
        assert s["rows"] == int(s["stage"].split(" (")[1].split()[0]), s
    assert ranked[-1]["rows"] < sum(s["rows"] for s in ranked[:-1])  # the questions' shared starts, once
    assert "x the song's prefill" in proc.stdout
