"""Decoding, resampling and windows vs the original's path (ffmpeg CLI decode, torchaudio resample, windows)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from audio_fixtures import have_ffmpeg_cli, music, write_audio
from mufun_local.audio import decode as audio
from mufun_local.errors import AudioError

needs_ffmpeg = pytest.mark.skipif(not have_ffmpeg_cli(), reason="the ffmpeg CLI (the original's decoder) is not installed")


def _ffmpeg_read(path):
    import mutagen
    from transformers.pipelines.audio_utils import ffmpeg_read
    with open(path, "rb") as fh:
        return ffmpeg_read(fh.read(), mutagen.File(path).info.sample_rate)


@needs_ffmpeg
@pytest.mark.parametrize("ext,rate,channels", [
    (".wav", 44100, 1), (".wav", 44100, 2), (".wav", 48000, 6),
    (".flac", 22050, 2), (".flac", 96000, 6), (".mp3", 44100, 2), (".ogg", 44100, 2),
])
def test_decode_equals_ffmpeg_read(tmp_path, ext, rate, channels):
    path = tmp_path / f"x{ext}"
    if ext == ".ogg":
        # a libvorbis file, as found in the wild (PyAV's bundled FFmpeg has no libvorbis encoder)
        write_audio(tmp_path / "src.wav", music(3.0, rate, channels), rate)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "src.wav"), "-c:a", "libvorbis",
                        str(path)], check=True)
    else:
        write_audio(path, music(3.0, rate, channels), rate)
    ours = audio.decode(str(path))
    theirs = _ffmpeg_read(str(path))
    assert ours.rate == rate
    if ext == ".mp3":
        # PyAV drops the decoder's trailing padding that the CLI keeps; the samples agree
        assert 0 <= len(theirs) - len(ours.samples) <= 1152
        theirs = theirs[:len(ours.samples)]
    assert len(ours.samples) == len(theirs)
    np.testing.assert_allclose(ours.samples, theirs, rtol=0, atol=1e-6)


def test_stereo_downmix_is_ffmpegs_not_the_mean(tmp_path):
    x = music(1.0, 16000, 2)
    path = write_audio(tmp_path / "s.flac", x, 16000)
    pcm = audio.decode(str(path)).samples
    q = np.round(x * 32767) / 32767  # flac stores 16-bit
    np.testing.assert_allclose(pcm, (q[:, 0] + q[:, 1]) / np.sqrt(2), atol=1e-4)
    assert np.abs(pcm - q.mean(axis=1)).max() > 0.05


@pytest.mark.parametrize("ext,rate", [(".opus", 48000), (".m4a", 44100)])
def test_formats_the_original_cannot_read(tmp_path, ext, rate):
    path = write_audio(tmp_path / f"x{ext}", music(2.0, rate, 2), rate)
    d = audio.decode(str(path))
    assert d.rate == rate and abs(d.seconds - 2.0) < 0.1
    assert np.abs(d.samples).max() > 0.1


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 37800, 44100, 48000, 96000])
def test_resample_equals_torchaudio(ref, rate):
    rng = np.random.default_rng(rate)
    x = music(2.1, rate, 1)[: rate * 2 + 123, 0]
    x = x + (0.3 * rng.standard_normal(len(x))).astype(np.float32)
    ours = audio.resample(x, rate)
    import torch
    theirs = ref.resample(torch.from_numpy(x.copy()), rate, 16000).numpy()
    assert ours.shape == theirs.shape
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_resample_in_blocks_equals_one_block():
    x = np.random.default_rng(0).standard_normal(44100 * 3).astype(np.float32)
    # BLAS may sum in another order for other block shapes: equal to float rounding
    np.testing.assert_allclose(audio.resample(x, 44100, block_frames=7), audio.resample(x, 44100), atol=2e-6)


@pytest.mark.parametrize("seconds,expected", [(0.3, 1), (30.0, 1), (30.2, 1), (30.6, 2), (60.0, 2), (75.0, 3)])
def test_window_rule_matches_original(ref, tmp_path, seconds, expected):
    import soundfile as sf
    x = np.zeros(int(round(seconds * 16000)), np.float32)
    sf.write(str(tmp_path / "x.wav"), x, 16000, subtype="FLOAT")
    ours = audio.load_windows(str(tmp_path / "x.wav"))
    theirs = ref.split_windows(x)
    assert len(ours) == len(theirs) == expected
    assert [len(w) for w in ours] == [len(w) for w in theirs]


def test_silence_is_valid_audio(tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros((16000, 1), np.float32), 16000)
    windows = audio.load_windows(str(path))
    assert len(windows) == 1 and not windows[0].any()


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        audio.decode(str(tmp_path / "nope.flac"))


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        audio.decode(str(tmp_path / "empty.wav"))


def test_text_named_mp3(tmp_path):
    (tmp_path / "notes.mp3").write_text("these are my notes, not a song\n" * 20)
    with pytest.raises(AudioError, match="notes.mp3"):
        audio.decode(str(tmp_path / "notes.mp3"))


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        audio.decode(str(tmp_path))


def test_truncated_file_decodes_what_is_there(tmp_path, caplog):
    path = write_audio(tmp_path / "x.mp3", music(4.0, 44100, 2), 44100)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    d = audio.decode(str(cut))
    assert 1.0 < d.seconds < 3.0


def test_garbage_after_header(tmp_path):
    path = write_audio(tmp_path / "x.flac", music(1.0, 44100, 1), 44100)
    data = bytearray(path.read_bytes())
    data[200:] = bytes(len(data) - 200)  # keep the header, zero the frames
    bad = tmp_path / "bad.flac"
    bad.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="bad.flac"):
        audio.decode(str(bad))


@pytest.mark.parametrize("segs,match", [((5.0, 9.0), "beyond the end"), ((2.0, 1.0), "start < end"),
                                        ((-1.0, 1.0), "start < end")])
def test_bad_segs(tmp_path, segs, match):
    path = write_audio(tmp_path / "x.wav", music(2.0, 16000, 1), 16000)
    with pytest.raises(AudioError, match=match):
        audio.load_windows(str(path), segs)


def test_parse_segs():
    assert audio.parse_segs("12.5:42") == (12.5, 42.0)
    for bad in ("12", "a:b", "5:2", "1:2:3"):
        with pytest.raises(AudioError):
            audio.parse_segs(bad)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_load_windows_equals_original_load_audio_single(ref, audio_dir):
    for name, seg in (("song44k.wav", None), ("long48k.flac", None), ("song44k.wav", (1.0, 5.5))):
        ours = audio.load_windows(str(audio_dir / name), seg)
        theirs = ref.load_audio_single(str(audio_dir / name), seg)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("ext,channels,subtype", [(".wav", 1, "PCM_16"), (".wav", 2, "PCM_16"),
                                                  (".flac", 2, "PCM_16"), (".wav", 2, "FLOAT")])
def test_plain_pcm_fast_path_equals_ffmpeg_decode(tmp_path, monkeypatch, ext, channels, subtype):
    import soundfile as sf
    path = tmp_path / f"x{ext}"
    sf.write(str(path), music(3.0, 44100, channels), 44100, subtype=subtype)
    fast = audio.decode(str(path))
    monkeypatch.setattr(audio, "_plain_pcm", lambda *a: None)
    slow = audio.decode(str(path))
    assert fast.rate == slow.rate
    np.testing.assert_array_equal(fast.samples, slow.samples)


def test_streaming_resampler_equals_whole_signal():
    x = np.random.default_rng(0).standard_normal(44100 * 3 + 17).astype(np.float32)
    whole = audio.resample(x, 44100)
    rs = audio.Resampler(44100)
    rng = np.random.default_rng(1)
    pieces, pos = [], 0
    while pos < len(x):
        k = int(rng.integers(1, 5000))
        pieces.append(rs.push(x[pos:pos + k]))
        pos += k
    pieces.append(rs.finish())
    streamed = np.concatenate(pieces)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=2e-6)


@pytest.mark.parametrize("ext", [".wav", ".mp3"])
def test_long_file_memory_is_the_windows_plus_a_block(tmp_path, ext):
    import tracemalloc
    seconds, rate = 300, 44100
    path = tmp_path / f"long{ext}"
    if ext == ".wav":
        import soundfile as sf
        with sf.SoundFile(str(path), "w", rate, 2, "PCM_16") as f:  # written in pieces, too
            for _ in range(seconds // 10):
                f.write(music(10.0, rate, 2))
    else:
        write_audio(path, np.tile(music(10.0, rate, 2), (seconds // 10, 1)), rate)
    tracemalloc.start()
    windows = audio.load_windows(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out_bytes = sum(w.nbytes for w in windows)
    assert len(windows) == 10
    # the whole-file path held the native-rate signal (2.8x the output) and a padded copy
    assert peak < out_bytes + 16 * 1024 * 1024, (peak, out_bytes)


def test_decoding_stops_when_too_long(tmp_path):
    import soundfile as sf
    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros((16000 * 200, 1), np.float32), 16000)
    with pytest.raises(audio.TooLong):
        audio.load_windows(str(path), max_windows=2)
    assert len(audio.load_windows(str(path), max_windows=7)) == 7


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_far_too_long_is_refused_from_the_declared_length(tmp_path, monkeypatch, ext):
    """A file far past the budget is refused before decoding; segs inside it still work."""
    path = write_audio(tmp_path / f"long.{ext}", np.tile(music(10.0, 44100, 2), (18, 1)), 44100)  # 3 min
    pushed = []
    real_push = audio.Resampler.push
    monkeypatch.setattr(audio.Resampler, "push", lambda self, x: pushed.append(len(x)) or real_push(self, x))
    with pytest.raises(audio.TooLong, match=r"about 18\d s, more than 1 x 30 s windows"):
        audio.load_windows(str(path), max_windows=1)
    assert pushed == []
    assert len(audio.load_windows(str(path), (140.0, 170.0), max_windows=1)) == 1


def test_segs_stream_equals_whole_then_cut(ref, tmp_path):
    """segs cut at the native rate, then resample, then the original's window rule."""
    path = write_audio(tmp_path / "x.flac", music(70.0, 22050, 2), 22050)
    full = audio.decode(str(path))
    for segs in [(3.3, 40.1), (0.0, 31.0), (65.0, 500.0), (1.5, 3.25)]:
        cut = full.samples[int(segs[0] * full.rate):int(segs[1] * full.rate)]
        expected = ref.split_windows(audio.resample(cut, full.rate))
        got = audio.load_windows(str(path), segs)
        assert [len(w) for w in got] == [len(w) for w in expected]
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=2e-6)


def test_overlapped_decoding_equals_the_sequential_one(tmp_path):
    """frontend.load_log_mels (decoding in a worker thread) = log_mel(load_windows), exactly;
    its errors reach the caller and leave no thread behind."""
    import threading

    from mufun_local.audio import features
    from mufun_local.audio.windows import load_log_mels, one_blas_thread
    path = write_audio(tmp_path / "x.flac", music(75.0, 44100, 2), 44100)
    filters = features.mel_filters(128)
    mels, seconds = load_log_mels(str(path), (2.0, 70.0), filters)
    with one_blas_thread():  # as mel_windows runs it: float32 GEMMs round by thread count
        want = features.log_mel(audio.load_windows(str(path), (2.0, 70.0)), filters)
    np.testing.assert_array_equal(np.stack(mels), want)
    assert seconds == pytest.approx(68.0, abs=1e-3) and len(mels) == 3
    with pytest.raises(audio.TooLong):
        load_log_mels(str(path), None, filters, max_windows=1)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(audio.AudioError, match="empty"):
        load_log_mels(str(tmp_path / "empty.wav"), None, filters)
    assert not [t for t in threading.enumerate() if t.name == "mufun-decode"]


@pytest.mark.parametrize("rate", [44101, 12345, 9_999_991])
def test_rate_sharing_no_factor_with_16k_is_refused_not_a_memory_bomb(tmp_path, rate):
    """A 64-byte WAV declaring 44,101 Hz would make torchaudio's kernel 2.8 GB (16000 x 44135
    taps): refused with a clear error before any kernel is built."""
    import soundfile as sf
    path = tmp_path / "odd.wav"
    sf.write(str(path), np.zeros(16, np.int16), rate, subtype="PCM_16")
    audio.sinc_kernel.cache_clear()
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz shares no common factor"):
        audio.load_windows(str(path))
    assert audio.sinc_kernel.cache_info().currsize == 0
    assert audio.kernel_taps(rate) > audio.MAX_KERNEL_TAPS


def test_every_usual_rate_is_accepted():
    for rate in (8000, 11025, 16000, 22050, 24000, 32000, 37800, 44100, 47250, 48000, 88200, 96000,
                 176400, 192000, 352800, 384000, 705600, 768000, 2822400):
        assert audio.kernel_taps(rate) <= audio.MAX_KERNEL_TAPS, rate


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a"])
def test_bytes_and_file_objects_decode_as_the_path_does(tmp_path, ext):
    """The server's uploads: the same samples from memory as from the file (the plain-PCM
    fast path by the bytes' magic, FFmpeg probing the rest)."""
    path = write_audio(tmp_path / f"x{ext}", music(4.0, 44100, 2), 44100)
    want = audio.load_windows(str(path))
    data = path.read_bytes()
    with open(path, "rb") as fh:
        for source in (data, bytearray(data), memoryview(data), fh):
            got = audio.load_windows(source)
            assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_an_array_is_16khz_mono_samples(tmp_path):
    samples = music(35.0, 16000, 1)[:, 0].astype(np.float32)
    path = tmp_path / "x.wav"
    import soundfile as sf
    sf.write(str(path), samples, 16000, subtype="FLOAT")
    got, want = audio.load_windows(samples), audio.load_windows(str(path))
    assert [len(w) for w in got] == [480000, 80000]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("source,message", [
    (b"", "<audio data>: file is empty"),
    (b"RIFF not really a wave file" * 10, "<audio data>: not a readable audio file"),
    (np.zeros((2, 100), np.float32), "1-D float array"),
    (np.zeros(100, np.int16), "1-D float array"),
    (np.zeros(0, np.float32), "no audio samples"),
    (12, "unsupported audio source int"),
])
def test_bad_sources_say_so_in_one_line(source, message):
    with pytest.raises(AudioError, match=message) as err:
        audio.load_windows(source)
    assert "\n" not in str(err.value)


def test_a_text_mode_file_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with open(tmp_path / "x.txt") as fh, pytest.raises(AudioError, match="binary mode"):
        audio.load_windows(fh)
