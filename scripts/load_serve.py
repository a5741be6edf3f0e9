#!/usr/bin/env python3
"""Bounded load test of `mufun-local serve`: requests/s and p50/p95 latency.

Starts the server on a free loopback port (or uses --url), sends --requests requests with
--concurrency clients at a time, each with one audio clip (made here, --seconds long) and a
question, and prints the figures. Stops by itself; only talks to 127.0.0.1 or --url.

    python scripts/load_serve.py --model MODEL_DIR --seconds 30 --concurrency 1 8 --requests 16
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def start_server(model: str, max_tokens: int, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mufun_local", "serve", "-m", model, "--port", str(port),
                             "--max-tokens", str(max_tokens), "--max-queue", "256", "--no-cache", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not start")


def demo_model() -> str:
    """The demo's tiny model (made on first use, offline)."""
    from mufun_local.cli.demo import run_demo
    return str(run_demo("warm-up", 1, echo=lambda m: None))


def one_request(url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        json.loads(r.read())
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="converted model dir (default: the demo's tiny model)")
    ap.add_argument("--url", help="an already running server instead of starting one")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_audio import make_song

    model = args.model or (None if args.url else demo_model())
    with tempfile.TemporaryDirectory(prefix="mufun-load-") as tmp:
        clip = make_song(Path(tmp) / "clip.wav", args.seconds, 44100).read_bytes()
    body = json.dumps({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}},
        {"type": "text", "text": "What genre is this?"}]}], "max_tokens": args.max_tokens, "temperature": 0}).encode()
    proc, url = (None, args.url) if args.url else start_server(model, args.max_tokens)
    try:
        one_request(url, body)  # warm-up
        print(f"\n{args.seconds:.0f} s clips, {args.requests} requests per run, max_tokens {args.max_tokens}")
        print("| concurrent clients | requests/s | p50 latency s | p95 latency s |")
        print("|---|---|---|---|")
        for c in args.concurrency:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=c) as pool:
                lat = sorted(pool.map(lambda _: one_request(url, body), range(args.requests)))
            wall = time.perf_counter() - t0
            p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
            print(f"| {c} | {args.requests / wall:.2f} | {statistics.median(lat):.2f} | {p95:.2f} |")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
