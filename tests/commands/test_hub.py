"""Hub ids and `pull`: the default install's engines, the cost said before a download, the
download itself (huggingface_hub faked at its API and download calls: no test downloads),
resumption from a partly filled cache, and one-line errors offline."""
from __future__ import annotations

import shutil
from importlib.metadata import requires
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from packaging.requirements import Requirement

from mufun_local.store import hub
from mufun_local.format.model_dir import ModelDir
from mufun_local.convert.run import convert, default_encoder_backends
from helpers import assert_one_line_error, run_cli

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_a_plain_install_writes_and_runs_the_onnx_engines(tmp_path, tiny_ckpt):
    """ONNX Runtime and OpenVINO are core dependencies where they have wheels (not extras), so
    a plain `pip install .` converts the ONNX graph and `auto` can pick the faster engine."""
    core = [Requirement(r) for r in requires("mufun-local") if "extra ==" not in r]
    here = {r.name for r in core if r.marker is None or r.marker.evaluate()}
    assert {"onnx", "onnxruntime", "openvino", "ctranslate2"} <= here
    assert all("torch" not in r.name for r in core)
    assert default_encoder_backends() == ("ctranslate2", "onnx")
    out = convert(str(tiny_ckpt), tmp_path / "m", quant="f16", quiet=True)  # the defaults
    backends = ModelDir.open(out).manifest["encoder"]["backends"]
    assert "ctranslate2" in backends and "onnx" in backends


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setenv("MUFUN_HOME", str(tmp_path / "home"))
    return cache


def _fake_hub(monkeypatch, ckpt, calls):
    """model_info lists the checkpoint's files with their sizes; snapshot_download with
    local_files_only finds nothing, and without it "downloads" by copying the checkpoint."""
    siblings = [SimpleNamespace(rfilename=p.name, size=p.stat().st_size) for p in sorted(ckpt.iterdir())]
    siblings.append(SimpleNamespace(rfilename="README.md", size=10**9))  # not fetched: not counted

    def model_info(self, repo_id, revision=None, files_metadata=False):
        calls.append(("model_info", repo_id, revision, files_metadata))
        return SimpleNamespace(sha=SHA, siblings=siblings)

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False, **kw):
        calls.append(("snapshot_download", repo_id, revision, tuple(allow_patterns or ()), local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        dest = ckpt.parent / "downloaded" / revision
        if not dest.exists():
            shutil.copytree(ckpt, dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return sum(s.size for s in siblings[:-1])


def test_pull_says_what_it_costs_then_downloads_and_converts(capsys, hub_cache, tmp_path, tiny_ckpt, monkeypatch):
    ckpt = tmp_path / "remote" / "MuFun-Base"
    shutil.copytree(tiny_ckpt, ckpt)
    calls = []
    total = _fake_hub(monkeypatch, ckpt, calls)
    code, out, err = run_cli(capsys, "pull", "Yi3852/MuFun-Base", "--quant", "f16")
    assert code == 0, err
    lines = err.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("downloading Yi3852/MuFun-Base@0123456789"))
    assert f"{len(list(ckpt.iterdir()))} files, {total / 1e9:.1f} GB, {total / 1e9:.1f} GB to download" in lines[said]
    assert "converting to f16 then takes about" in lines[said]
    assert [c[0] for c in calls] == ["snapshot_download", "model_info", "snapshot_download"]
    assert calls[2][2] == SHA and calls[2][3] == hub.PATTERNS and calls[2][4] is False  # the resolved commit
    assert out.startswith("ready: ")
    md = ModelDir.open(out.split()[1])
    assert md.manifest["source"] == {"id": "Yi3852/MuFun-Base", "revision": SHA}
    assert md.path.parent == tmp_path / "home" / "models"
    # Again: nothing asked of the hub, nothing converted.
    calls.clear()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", None)
    code, out, err = run_cli(capsys, "pull", "Yi3852/MuFun-Base", "--quant", "f16")
    assert code == 0 and out.startswith("already converted: ") and calls == []


def test_the_plan_counts_only_what_the_cache_lacks(hub_cache, tmp_path, tiny_ckpt, monkeypatch):
    """Files already in huggingface_hub's cache (an interrupted download) are not counted again."""
    calls = []
    total = _fake_hub(monkeypatch, tiny_ckpt, calls)
    snap = hub_cache / "models--Yi3852--MuFun-Base" / "snapshots" / SHA
    snap.mkdir(parents=True)
    shutil.copy(tiny_ckpt / "config.json", snap / "config.json")
    p = hub.plan("Yi3852/MuFun-Base")
    assert p.total_bytes == total
    assert p.missing_bytes == total - (tiny_ckpt / "config.json").stat().st_size
    assert p.revision == SHA and p.files == len(list(tiny_ckpt.iterdir()))


def test_the_plan_estimates_scale_with_the_checkpoint():
    p = hub.Plan("Yi3852/MuFun-Base", SHA, 9, int(17.84e9), int(17.84e9))  # the full-size checkpoint
    text = p.describe("q4_k_m", cores=2)
    assert "17.8 GB to download" in text and "on 2 cores" in text
    minutes = int(text.split("takes about ")[1].split()[0])
    assert 5 <= minutes <= 15  # measured: 9.75 min on 2 cores, engine timing included (docs/performance.md)
    gb = float(text.split("writes about ")[1].split()[0])
    assert 8 < gb < 10  # measured: 7.97 GB, before the encoder's 1.27 GB OpenVINO copy
    assert float(p.describe("q8_0", cores=2).split("writes about ")[1].split()[0]) > gb
    f16 = p.describe("f16", cores=2)  # measured: 3.7 min (no quantizer pass), 20.6 GB
    assert int(f16.split("takes about ")[1].split()[0]) <= 5 and 19 < float(f16.split("writes about ")[1].split()[0]) < 22


def test_pull_offline_is_one_line(capsys, hub_cache, monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    code, _, err = run_cli(capsys, "pull", "Yi3852/MuFun-Base")
    assert_one_line_error(code, err, "Yi3852/MuFun-Base: not in the local Hugging Face cache and cannot be downloaded")
    assert "mufun-local pull Yi3852/MuFun-Base" in err


def test_pull_takes_only_hub_ids(capsys, hub_cache, tmp_path):
    code, _, err = run_cli(capsys, "pull", str(tmp_path))
    assert_one_line_error(code, err, "`pull` takes a hub id")
    code, _, err = run_cli(capsys, "pull", "not a/valid id")
    assert_one_line_error(code, err, "`pull` takes a hub id")
