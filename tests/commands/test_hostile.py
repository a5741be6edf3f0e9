"""Hostile input, generated (Hypothesis): audio headers and contents, request bodies. Every
case ends in a clean one-line error or a correct result, memory stays bounded whatever a
header claims, and nothing is left behind."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import tracemalloc
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mufun_local.audio import decode as audio
from mufun_local.errors import AudioError

USUAL_RATES = [8000, 11025, 16000, 22050, 44100, 48000, 96000]
MAX_WINDOWS = 4
MEMORY_BOUND = 192 * 1024 * 1024  # numpy's and Python's allocations while decoding one file


def wav(rate: int, channels: int, frames: int, fmt: str, special: str, lie: int) -> bytes:
    """A RIFF/WAVE file written by hand, so its header can lie."""
    bits, tag = (16, 1) if fmt == "pcm16" else (32, 3)
    rng = np.random.default_rng(frames + channels)
    x = (0.3 * rng.standard_normal((frames, channels))).astype(np.float32)
    if special != "none" and frames and fmt == "float32":
        x[frames // 2, 0] = np.nan if special == "nan" else np.inf
    data = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes() if fmt == "pcm16" else x.astype("<f4").tobytes()
    align = channels * bits // 8
    declared = (len(data) + lie) & 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", (36 + declared) & 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
            + b"data" + struct.pack("<I", declared) + data)


def expected_lengths(frames: int, rate: int) -> list[int]:
    """The original's windows of a file this long: torchaudio's output length, 30 s windows,
    a last piece kept only when it is the first or longer than 8,000 samples."""
    n = frames if rate == audio.SAMPLE_RATE else math.ceil(frames * audio.SAMPLE_RATE / rate)
    full, rest = divmod(n, audio.WINDOW_SAMPLES)
    return [audio.WINDOW_SAMPLES] * full + ([rest] if rest and (not full or rest > audio.MIN_PIECE_SAMPLES) else [])


# derandomized: CI runs the same cases every time (a failure is a bug, not a lucky draw)
@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.one_of(st.sampled_from(USUAL_RATES), st.integers(1, 10_000_000)),
       channels=st.one_of(st.integers(1, 8), st.integers(9, 255)),
       frames=st.one_of(st.just(0), st.integers(1, 40_000)),
       fmt=st.sampled_from(["pcm16", "float32"]),
       special=st.sampled_from(["none", "none", "nan", "inf"]),
       lie=st.sampled_from([0, 0, 1, 4096, 2**31, -7]))
def test_any_wav_header_gives_windows_or_one_clean_error(tmp_path_factory, rate, channels, frames, fmt, special, lie):
    path = tmp_path_factory.mktemp("hostile") / "x.wav"
    path.write_bytes(wav(rate, channels, frames, fmt, special, lie))
    tracemalloc.start()
    try:
        windows = audio.load_windows(str(path), max_windows=MAX_WINDOWS)
    except AudioError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(path) in msg, msg
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MB for a {path.stat().st_size}-byte file"
    # decoded: then it is what the original's preprocessing makes of these samples (a header
    # declaring less data than there is is believed; one declaring more reads what is there)
    assert special == "none" or fmt == "pcm16", "NaN/inf samples must be refused"
    align = channels * (2 if fmt == "pcm16" else 4)
    declared = (frames * align + lie) & 0xFFFFFFFF  # as wav() writes it (a negative size wraps)
    read = frames if declared >= frames * align else declared // align
    assert [len(w) for w in windows] == expected_lengths(read, rate)
    assert all(np.isfinite(w).all() for w in windows)


@pytest.mark.parametrize("frames,lie", [(1, -7), (3, -7), (100, -2), (5, 2**31)])
def test_header_sizes_that_lie(tmp_path, frames, lie):
    """Cases Hypothesis found once: a declared size that wraps below zero reads what is there."""
    test_any_wav_header_gives_windows_or_one_clean_error.hypothesis.inner_test(
        tmp_path_factory=_Factory(tmp_path), rate=8000, channels=1, frames=frames, fmt="pcm16", special="none", lie=lie)


class _Factory:
    def __init__(self, root):
        self.root, self.n = root, 0

    def mktemp(self, name):
        self.n += 1
        path = self.root / f"{name}{self.n}"
        path.mkdir()
        return path


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    path.write_bytes(wav(16000, 1, 16000, "float32", "nan", 0))
    with pytest.raises(AudioError, match="NaN or infinite samples"):
        audio.load_windows(str(path))


def test_a_low_rate_upsamples_in_bounded_pieces(tmp_path):
    """4 kHz of 1 Hz audio is 4,000 s at 16 kHz: memory stays one piece, not 256 MB per block."""
    path = tmp_path / "slow.wav"
    path.write_bytes(wav(1, 1, 4000, "pcm16", "none", 0))
    tracemalloc.start()
    with pytest.raises(audio.TooLong):
        audio.load_windows(str(path), max_windows=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MEMORY_BOUND


@pytest.mark.parametrize("rate", [44101, 1, 9_999_991])
def test_cli_under_an_address_space_limit(tmp_path, tiny_q4, rate):
    """The real CLI under a 6 GB address-space limit: a rate bomb is one clean line; 64 samples
    at 1 Hz (64 s, upsampled 16,000x) are answered; never a MemoryError or a crash."""
    path = tmp_path / "x.wav"
    path.write_bytes(wav(rate, 1, 64, "pcm16", "none", 0))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30));"
    proc = subprocess.run([sys.executable, "-c", limit + "from mufun_local.cli import main; raise SystemExit(main())",
                           "ask", "-m", str(tiny_q4), str(path), "Genre?", "--max-tokens", "2", "--no-cache"],
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    if rate == 1:
        assert proc.returncode == 0 and proc.stdout.strip(), err
        return
    assert proc.returncode != 0 and len(err.splitlines()) == 1 and "no common factor" in err, err


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=40),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=20)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "input_audio", "image_url", 7])},
                             optional={"text": JSON, "input_audio": JSON | st.fixed_dictionaries(
                                 {"data": st.sampled_from(["", "UklGRg==", "!!", "AAAA"]) | JSON,
                                  "format": st.sampled_from(["wav", "mp3", "xyz"]) | JSON},
                                 optional={"segs": JSON})})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
                                optional={"content": st.text(max_size=30) | st.lists(PART, max_size=3) | JSON})
BODY = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3) | JSON},
                             optional={k: JSON for k in ("temperature", "top_p", "max_tokens", "seed", "stop",
                                                         "stream", "stream_options", "max_completion_tokens")})


@pytest.fixture(scope="module")
def hostile_server(serve):
    return serve("--max-tokens", "4", "--ctx", "1024")


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_any_request_body_becomes_a_job_or_a_request_error(tiny_q4, body):
    """The request side alone, in process (where every refusal is decided): a body is a
    prompt, sampling and stops, or a RequestError with a 4xx status and one line."""
    from mufun_local.format.model_dir import ModelDir
    from mufun_local.server.task import RequestError, build_prompt, parse_body, request_settings
    model = ModelDir.open(tiny_q4)
    try:
        parsed = parse_body(json.dumps(body).encode())
        prm, audios = build_prompt(parsed.get("messages"), model.manifest)
        sampling, max_tokens, stop = request_settings(parsed, model, 4, 1024)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and "\n" not in exc.message
        return
    assert prm.n_audio == len(audios) and 1 <= max_tokens <= 1024 and isinstance(stop, list)


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_any_request_body_is_answered_or_refused_never_a_500(serve, hostile_server, body):
    """The same bodies end to end, fewer: through HTTP, the queue and the worker."""
    if isinstance(body.get("stream"), bool) or body.get("stream"):
        body["stream"] = False  # streamed answers are tested in test_server; here: the status
    req = urllib.request.Request(hostile_server + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, out = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, out = e.code, json.loads(e.read())
    assert status in (200, 400, 413), (status, out)
    if status != 200:
        assert set(out["error"]) >= {"message", "type"} and "\n" not in out["error"]["message"]


def test_the_fuzzed_server_wrote_nothing_to_disk(serve, hostile_server):
    """Uploads are decoded in memory: its temporary folder stays empty."""
    left = list(serve.tmpdirs[hostile_server].iterdir())
    assert not left, f"the server wrote {left}"


def test_full_disk_caches_are_skipped_and_a_full_journal_is_one_line(capsys, tmp_path, tiny_q4, audio_dir,
                                                                     monkeypatch):
    """A cache that cannot be written is a warning, not a failed answer; a journal or table
    that cannot be written is one line naming the file (an injected ENOSPC)."""
    import errno
    from mufun_local import lru
    from mufun_local.cli import main
    real = lru.write_atomic

    def full(path, write):
        def failing(fh):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, failing)
    from mufun_local.batch import export
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(lru, "write_atomic", full)  # the caches' (lru.put_or_skip)
    monkeypatch.setattr(export, "write_atomic", full)  # the table's (its own import of it)
    song = str(audio_dir / "song22k.flac")
    assert main(["ask", "-m", str(tiny_q4), song, "Genre?", "--max-tokens", "2", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert "embedding cache: cannot write" in err and "No space left on device" in err and "Traceback" not in err
    assert not list((tmp_path / "home").rglob("*.partial"))
    # batch: its table goes through write_atomic, its journal through write_record
    assert main(["batch", song, "-m", str(tiny_q4), "--question", "Genre?", "--max-tokens", "2", "-q",
                 "--out", str(tmp_path / "j.jsonl"), "--format", "csv"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'j.csv'}: No space left on device", err
    import mufun_local.batch.local as batch

    def journal_full(rec):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(batch, "record_line", journal_full)
    assert main(["batch", song, "-m", str(tiny_q4), "--question", "Other?", "--max-tokens", "2", "-q",
                 "--out", str(tmp_path / "k.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'k.jsonl'}: No space left on device", err
