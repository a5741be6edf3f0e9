"""ONNX Runtime and OpenVINO encoder backends, both reading the converter's ONNX graph.

The graph (convert/encoder_onnx.py) takes log-mel windows and returns hidden
states 0/7/15/32 as its four outputs, so the whole encoder is one engine call. ONNX Runtime
runs it in float32 or, from the int8 file, with int8 weight MatMuls (VNNI where the CPU has
it); OpenVINO runs the float32 file in float32, or its own 16-bit copy of the graph in
bfloat16 (AVX512-BF16 / AMX where the CPU has them).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .base import EncoderBase, HiddenStates
from ..errors import ModelError, first_line

OUTPUTS = ("hs0", "hs7", "hs15", "hs32")


@functools.lru_cache(maxsize=1)
def openvino_bf16() -> bool:
    """Whether OpenVINO runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        import openvino
        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin
        return False


class _OnnxEncoder(EncoderBase):
    def __init__(self, encoder_dir: str | Path, device: str, compute_type: str, batch_size: int):
        super().__init__(encoder_dir, "cpu", compute_type, batch_size)
        path = self.files.onnx_file(self.compute_type)
        if path is None or not path.is_file():
            how = "--onnx-int8" if self.compute_type == "int8" else "--encoder-backends ctranslate2,onnx"
            raise ModelError(f"{self.dir}: no ONNX encoder for {self.compute_type}; convert the model again with {how}")
        self.path = path

    def _load_error(self, exc: Exception) -> ModelError:
        return ModelError(f"{self.path}: cannot load ({first_line(exc, 300)})")


class OnnxRuntimeEncoder(_OnnxEncoder):
    backend = "onnxruntime"

    def __init__(self, encoder_dir, device, compute_type, threads=0, batch_size=4):
        import onnxruntime as ort
        super().__init__(encoder_dir, device, compute_type, batch_size)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(0, threads)
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise self._load_error(exc) from None

    def _hidden_batch(self, mel: np.ndarray) -> HiddenStates:
        return HiddenStates(*self.session.run(list(OUTPUTS), {"mel": mel}))


class OpenVinoEncoder(_OnnxEncoder):
    """bfloat16 runs read the converter's OpenVINO file when the model has one (its 16-bit
    weights stay 16-bit: 2.9 GB resident at full size instead of 5.4 GB from the ONNX
    file); float32 runs, and models converted before that file existed, read the ONNX file."""
    backend = "openvino"

    def __init__(self, encoder_dir, device, compute_type, threads=0, batch_size=4):
        import openvino as ov
        super().__init__(encoder_dir, device, compute_type, batch_size)
        ir = self.files.openvino_file
        if self.compute_type == "bfloat16" and ir is not None and ir.is_file():
            self.path = ir
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.compute_type == "bfloat16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:
            raise self._load_error(exc) from None
        self.request = self.compiled.create_infer_request()

    def _hidden_batch(self, mel: np.ndarray) -> HiddenStates:
        self.request.infer({"mel": np.ascontiguousarray(mel)})
        return HiddenStates(*(np.array(self.request.get_tensor(name).data, dtype=np.float32) for name in OUTPUTS))
