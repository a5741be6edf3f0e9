"""A converted model's encoder/ folder: what each file holds and where each engine's files are.

    encoder.json     sizes, hidden-state layers, the artifacts written, each one's files
    frontend.npz     the conv stem, positions and the Slaney mel filters (float32)
    seg0..2/         CTranslate2 artifact: three Wav2Vec2-encoder models (encoder_ct2)
    onnx/            ONNX artifact: the float32 graph, the int8 one with --onnx-int8, and
                     OpenVINO's 16-bit copy where OpenVINO was installed at conversion

The converter writes through `write_info` / `write_frontend`; every engine and the engine
choice read through `EncoderDir`. Adding an engine with its own artifact: its name in
ARTIFACTS, its writer in the converter, its files named in encoder.json under its key.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .checkpoint import FEATURE_LAYERS  # noqa: F401  (the layers encoder.json lists)

INFO = "encoder.json"
FRONTEND = "frontend.npz"
# What `convert --encoder-backends` may write, in the order encoder.json lists them
ARTIFACTS = ("ctranslate2", "onnx")
# What `convert --encoder-quant` may store the CTranslate2 artifact as, with its bytes per weight
CT2_STORED = {"float16": 2, "float32": 4, "int8": 1, "int8_float16": 1}
# Bytes per encoder weight of the ONNX artifact: the graph at 16 bits with OpenVINO's 16-bit
# copy beside it; the int8 graph (--onnx-int8) with ONNX Runtime's float32 scratch copy on the way
_ONNX_BYTES, _ONNX_INT8_BYTES = 4, 5


def bytes_per_weight(stored: str, artifacts, onnx_int8: bool = False) -> int:
    """What a conversion writes per encoder weight (for the disk check and the hub's estimate)."""
    return ((CT2_STORED[stored] if "ctranslate2" in artifacts else 0) + (_ONNX_BYTES if "onnx" in artifacts else 0)
            + (_ONNX_INT8_BYTES if onnx_int8 else 0))


def slaney_mel_filters(n_mels: int = 128) -> np.ndarray:
    """Whisper's filter bank [n_mels, 201] (librosa's Slaney mel, as WhisperFeatureExtractor)."""
    import librosa
    return librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels, fmin=0.0, fmax=8000.0,
                               htk=False, norm="slaney").astype(np.float32)


class EncoderDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _damaged(self, exc: Exception) -> ModelError:
        return ModelError(f"{self.path}: encoder files missing or damaged ({exc})")

    @cached_property
    def info(self) -> dict:
        """encoder.json."""
        try:
            info = json.loads((self.path / INFO).read_text())
        except (OSError, ValueError) as exc:
            raise self._damaged(exc) from None
        if not isinstance(info, dict):
            raise self._damaged(ValueError(f"{INFO} is not a table"))
        return info

    @cached_property
    def frontend(self):
        """frontend.npz's arrays (conv1/conv2 weights and biases, positions, mel_filters)."""
        try:
            data = np.load(self.path / FRONTEND)
            return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise self._damaged(exc) from None

    @property
    def mel_filters(self) -> np.ndarray:
        """The filters alone, read without the rest of frontend.npz."""
        if "frontend" in self.__dict__:
            return self.frontend["mel_filters"]
        try:
            return np.load(self.path / FRONTEND)["mel_filters"]
        except (OSError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from None

    def array(self, name: str) -> np.ndarray:
        try:
            return self.frontend[name]
        except KeyError as exc:
            raise self._damaged(exc) from None

    @property
    def d_model(self) -> int:
        return int(self.info["d_model"])

    @property
    def n_mels(self) -> int:
        return int(self.info.get("n_mels", 128))

    @property
    def artifacts(self) -> list[str]:
        return list(self.info.get("artifacts", ["ctranslate2"]))

    # -- CTranslate2
    @property
    def segments(self) -> list[tuple[Path, bool]]:
        """(model folder, returns the residual stream before its norm) for seg0..2."""
        return [(self.path / s["dir"], bool(s["raw_output"])) for s in self.info.get("segments", [])]

    @property
    def mean_offset(self) -> float:
        return float(self.info["mean_offset"])

    # -- ONNX (ONNX Runtime and OpenVINO)
    def onnx_file(self, compute_type: str) -> Path | None:
        """The graph ONNX Runtime reads for a compute type (int8, else float32); None when
        the conversion did not write it."""
        name = self.info.get("onnx", {}).get("int8" if compute_type == "int8" else "float32")
        return self.path / name if name else None

    @property
    def openvino_file(self) -> Path | None:
        """OpenVINO's 16-bit copy of the graph (its bfloat16 runs), when written."""
        name = self.info.get("onnx", {}).get("openvino")
        return self.path / name if name else None

    def has_onnx(self, compute_type: str) -> bool:
        return self.onnx_file(compute_type) is not None

    # -- the converter's side
    def write_frontend(self, **arrays: np.ndarray) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        np.savez(self.path / FRONTEND, **arrays)

    def write_info(self, info: dict) -> None:
        (self.path / INFO).write_text(json.dumps(info, indent=2) + "\n")
        self.__dict__.pop("info", None)
