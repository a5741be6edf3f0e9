#!/usr/bin/env python3
"""Soak test of `mufun-local serve` (loopback only, bounded in clients and time).

Starts the server on a free loopback port with its own temporary folder, then --clients
threads send requests for --minutes: good ones (greedy; every answer must equal the
first answer to the same request), bad ones (malformed JSON, bad base64, wrong types, a
non-audio upload, NaN, text/plain), and streamed ones the client hangs up on mid-stream.
Prints requests by kind and status, p50/p95 latency of good requests, the server's RSS after
warm-up (minute 2) and at the end, 5xx count and the temporary files left.

    python scripts/soak_serve.py --minutes 10 --clients 20      # default: the demo's tiny model
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audio import make_song  # noqa: E402
from load_serve import demo_model, start_server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(url: str, data: bytes, ctype: str = "application/json", timeout: float = 300) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def hang_up(url: str, body: dict) -> None:
    """A streamed request whose client goes away after the first bytes."""
    port = int(url.rsplit(":", 1)[1])
    data = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        s.recv(64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="converted model dir (default: the demo's tiny model)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0, help="audio clip length")
    args = ap.parse_args()
    model = args.model or demo_model()
    work = Path(tempfile.mkdtemp(prefix="mufun-soak-"))
    server_tmp = work / "server-tmp"
    server_tmp.mkdir()
    clips = [make_song(work / f"clip{i}.wav", args.seconds, 44100, seed=i) for i in range(3)]
    audio = [base64.b64encode(c.read_bytes()).decode() for c in clips]

    def good(i: int) -> dict:
        return {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": audio[i % 3], "format": "wav"}},
            {"type": "text", "text": ["What genre is this?", "Describe the mood.", "Which instruments?"][i % 3]}]}],
            "max_tokens": 8, "temperature": 0}
    bad = [(b"{not json", "application/json"), (json.dumps({"messages": []}).encode(), "application/json"),
           (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "application/json"),
           (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
               "data": "!!", "format": "wav"}}]}]}).encode(), "application/json"),
           (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
               "data": base64.b64encode(b"not audio" * 100).decode(), "format": "mp3"}}]}]}).encode(),
            "application/json"),
           (json.dumps(good(0)).encode(), "text/plain")]

    import os
    proc, url = start_server(model, 8, env=dict(os.environ, TMPDIR=str(server_tmp)))
    expected: dict[int, str] = {}
    for i in range(3):
        status, out = post(url, json.dumps(good(i)).encode())
        assert status == 200, out
        expected[i] = out["choices"][0]["message"]["content"]
    counts: Counter = Counter()
    latencies: list[float] = []
    mismatches = []
    lock = threading.Lock()
    t_end = time.monotonic() + args.minutes * 60
    rss = {"start": rss_mb(proc.pid)}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < t_end:
            kind = rng.choices(["good", "bad", "hangup"], [6, 3, 1])[0]
            i = rng.randrange(3)
            t0 = time.perf_counter()
            try:
                if kind == "good":
                    status, out = post(url, json.dumps(good(i)).encode())
                    if status == 200 and out["choices"][0]["message"]["content"] != expected[i]:
                        with lock:
                            mismatches.append(i)
                elif kind == "bad":
                    status, _ = post(url, *rng.choice(bad))
                else:
                    hang_up(url, good(i))
                    status = "hung up"
            except OSError as exc:
                status = f"client error {type(exc).__name__}"
            with lock:
                counts[(kind, status)] += 1
                if kind == "good" and status == 200:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in range(args.clients)]
    for t in threads:
        t.start()
    warm = min(120.0, args.minutes * 60 / 5)
    time.sleep(warm)
    rss["warm"] = rss_mb(proc.pid)
    for t in threads:
        t.join()
    time.sleep(2)
    rss["end"] = rss_mb(proc.pid)
    left = sorted(p.name for p in server_tmp.iterdir())
    proc.terminate()
    proc.wait(timeout=30)
    import shutil
    shutil.rmtree(work, ignore_errors=True)  # the clips and the server's temporary folder

    print(f"\n{args.clients} clients, {args.minutes:g} min, {args.seconds:g} s clips, tiny model: {model}")
    print("| request | status | count |\n|---|---|---|")
    for (kind, status), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        print(f"| {kind} | {status} | {n} |")
    lat = sorted(latencies)
    if lat:
        print(f"\ngood requests: {len(lat)}, p50 {statistics.median(lat):.2f} s, "
              f"p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s; answers differing from the first: {len(mismatches)}")
    fives = sum(n for (k, s), n in counts.items() if isinstance(s, int) and s >= 500)
    growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100
    print(f"server RSS: start {rss['start']:.0f} MB, after {warm:.0f} s {rss['warm']:.0f} MB, end {rss['end']:.0f} MB "
          f"({growth:+.1f} % from {warm:.0f} s); 5xx: {fives}; temporary files left: {len(left)}")
    return 0 if not fives and not left and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
