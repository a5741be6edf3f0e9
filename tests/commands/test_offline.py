"""Offline means offline: no dependency's telemetry starts, and no front door connects to
anything but loopback or a Unix socket (checked with a connect trace under strace)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mufun_local.offline import VARIABLES, openvino_opted_in, telemetry_off

CLI = [sys.executable, "-m", "mufun_local"]


def test_telemetry_is_off_and_a_users_own_setting_stays(tmp_path):
    env, mods = {"RAY_USAGE_STATS_ENABLED": "1"}, {}
    telemetry_off(env, mods, home=tmp_path)
    assert env == {**VARIABLES, "RAY_USAGE_STATS_ENABLED": "1"}  # the user's choice is kept
    assert env["ORT_DISABLE_TELEMETRY"] == "1" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert "openvino_telemetry" in mods and mods["openvino_telemetry"] is None
    consent = tmp_path / "intel" / "openvino_telemetry"
    consent.parent.mkdir()
    consent.write_text("1\n")  # opted in with OpenVINO's own `opt_in_out --opt_in`
    assert openvino_opted_in(tmp_path)
    mods = {}
    telemetry_off({}, mods, home=tmp_path)
    assert "openvino_telemetry" not in mods
    consent.write_text("0\n")
    assert not openvino_opted_in(tmp_path)


def test_openvino_uses_its_own_stub_after_import_mufun_local():
    code = ("import mufun_local, openvino, openvino.tools.ovc.telemetry_utils as t, os; "
            "print(t.tm.__name__, os.environ['ORT_DISABLE_TELEMETRY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["openvino.tools.ovc.telemetry_stub", "1"]


def outside_connects(trace: Path) -> list[str]:
    """connect() calls in an strace log to anything but a Unix socket or loopback."""
    bad = []
    for line in trace.read_text(errors="replace").splitlines():
        if "connect(" not in line:
            continue
        family = re.search(r"sa_family=(AF_\w+)", line)
        v4 = re.search(r'inet_addr\("([^"]+)"\)', line)
        v6 = re.search(r'inet_pton\(AF_INET6, "([^"]+)"', line)
        if family and (family.group(1) in ("AF_UNIX", "AF_NETLINK", "AF_UNSPEC")
                       or (family.group(1) == "AF_INET" and v4 and v4.group(1).startswith("127."))
                       or (family.group(1) == "AF_INET6" and v6 and v6.group(1) in ("::1", "::ffff:127.0.0.1"))):
            continue
        bad.append(line.strip())
    return bad


@pytest.fixture
def traced(tmp_path, tiny_ckpt):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/test.sh installs it with apt when run as root)")
    import tempfile
    home = tmp_path / "home"
    home.mkdir()
    # short: Ray's Unix sockets live under TMPDIR, and a socket path holds at most 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="mo-", dir="/tmp" if Path("/tmp").is_dir() else None))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "RAY_", "HF_", "RAY"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), MUFUN_HOME=str(tmp_path / "mufun"))

    def run(name, args, wait=True):
        cmd = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(tmp_path / f"{name}.trace"), *args]
        if not wait:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        return p
    run.tmp_path, run.home, run.tmp = tmp_path, home, tmp
    yield run
    shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_convert_ask_serve_and_ray_batch_connect_to_nothing_outside(traced, tiny_ckpt, audio_dir):
    model = traced.tmp_path / "model"
    song = str(audio_dir / "song22k.flac")
    traced("convert", [*CLI, "convert", str(tiny_ckpt), str(model), "-q"])
    traced("ask", [*CLI, "ask", "-m", str(model), song, "What genre?", "--max-tokens", "2", "-q"])
    port = _free_port()
    server = traced("serve", [*CLI, "serve", "-m", str(model), "--port", str(port)], wait=False)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        import base64
        import json
        body = json.dumps({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(Path(song).read_bytes()).decode(),
                                                    "format": "flac"}},
            {"type": "text", "text": "What genre?"}]}], "max_tokens": 2}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        assert json.loads(urllib.request.urlopen(req, timeout=300).read())["choices"]
    finally:
        import signal
        os.killpg(server.pid, signal.SIGTERM)  # strace and the server it runs
        server.wait(60)
    traced("batch", [*CLI, "batch", "-m", str(model), song, "--question", "What genre?", "--max-tokens", "2", "-q",
                     "--out", str(traced.tmp_path / "out.jsonl"), "--ray", "local"])
    for name in ("convert", "ask", "serve", "batch"):
        trace = traced.tmp_path / f"{name}.trace"
        assert trace.is_file(), name  # strace ran it
        assert outside_connects(trace) == [], name
    # no telemetry state: ONNX Runtime's offline cache and device id, Ray's usage stats
    left = [p for p in traced.tmp.rglob("*") if p.name in (".ses",) or "usage_stats" in p.name]
    assert left == [] and not (traced.home / "intel").exists()


def test_the_trace_reader_flags_an_outside_address(tmp_path):
    trace = tmp_path / "t"
    trace.write_text(
        '12 connect(3, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0\n'
        '12 connect(4, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
        '12 connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0\n'
        '13 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, 16) = 0\n')
    bad = outside_connects(trace)
    assert len(bad) == 1 and "10.0.0.2" in bad[0]
