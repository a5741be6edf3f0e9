"""The Whisper encoder as one ONNX graph with hidden states 0/7/15/32 as its outputs.

Built node by node from the checkpoint's tensors with `onnx.helper` (no torch, no export
trace): input log-mel [B, n_mels, 3000] -> conv1/GELU/conv2(stride 2)/GELU/+positions ->
32 pre-norm layers -> final LayerNorm. Every operator is a plain ONNX one (opset 20), so
ONNX Runtime and OpenVINO both read the same file. Weights are streamed into one external
data file as the graph is built, so only one tensor is in memory at a time.

The int8 file is ONNX Runtime's dynamic quantisation (`quantize_dynamic`) of a float32
copy whose attention is ONNX Runtime's fused MultiHeadAttention: the weight MatMuls become
int8 with per-channel scales, activations are quantised per call. Only ONNX Runtime reads it.
"""
from __future__ import annotations

import logging
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from mufun_local.errors import ModelError

from mufun_local.format import checkpoint as layout
from mufun_local.format.checkpoint import FEATURE_LAYERS, segment_bounds

OPSET = 20


class _Graph:
    """Accumulates nodes and initializers; initializers go straight to the data file."""

    def __init__(self, data_path: Path, compact: bool, contrib_attention: bool):
        from onnx import helper
        self.helper = helper
        self.nodes, self.inits = [], []
        self.data_path = data_path
        self.data = open(data_path, "wb")
        self.n = 0
        self.names = set()
        self.compact = compact
        self.contrib_attention = contrib_attention

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import TensorProto, numpy_helper
        if name in self.names:  # shared shape constants
            return name
        self.names.add(name)
        array = np.ascontiguousarray(array)
        if array.size < 64:  # shapes, scalars: inline
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        if self.compact and array.dtype == np.float32:
            bits = array.view(np.uint32)
            if not (bits & 0xFFFF).any():  # exactly a bfloat16 (the release's weights are)
                return self.op("Cast", [self._external(name + ".bf16", (bits >> 16).astype(np.uint16),
                                                       TensorProto.BFLOAT16)], name, to=TensorProto.FLOAT)
        return self._external(name, array, self.helper.np_dtype_to_tensor_dtype(array.dtype))

    def _external(self, name: str, array: np.ndarray, data_type: int) -> str:
        from onnx import TensorProto
        pad = (-self.data.tell()) % 64
        self.data.write(b"\0" * pad)
        offset = self.data.tell()
        self.data.write(array.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = data_type
        t.dims.extend(array.shape)
        for key, value in (("location", self.data_path.name), ("offset", offset), ("length", array.nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        t.data_location = TensorProto.EXTERNAL
        self.inits.append(t)
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"{op_type.lower()}_{self.n}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=f"n{self.n}_{op_type}", **attrs))
        return out

    def linear(self, x: str, name: str, w: np.ndarray, b: np.ndarray) -> str:
        """x @ w.T + b for a torch-layout weight [out, in]."""
        y = self.op("MatMul", [x, self.const(name + ".weight", w.T.astype(np.float32))])
        return self.op("Add", [y, self.const(name + ".bias", b.astype(np.float32))])

    def layer_norm(self, x: str, name: str, gamma: np.ndarray, beta: np.ndarray, eps: float, out=None) -> str:
        return self.op("LayerNormalization", [x, self.const(name + ".weight", gamma), self.const(name + ".bias", beta)],
                       out, axis=-1, epsilon=eps)


def _attention(g: _Graph, x: str, get, p: str, d: int, heads: int) -> str:
    hd = d // heads
    scale = hd ** -0.5
    # q, k, v in one MatMul; Whisper's q scaling folded into the q weights (k has no bias)
    w = np.concatenate([get(p + "q_proj.weight") * scale, get(p + "k_proj.weight"), get(p + "v_proj.weight")])
    b = np.concatenate([get(p + "q_proj.bias") * scale, np.zeros(d, np.float32), get(p + "v_proj.bias")])
    qkv = g.linear(x, p + "qkv", w, b)                                       # [B, T, 3d]
    if g.contrib_attention:
        split = g.const("split_ddd", np.array([d, d, d], np.int64))
        q, k, v = (f"{p}{n}_in" for n in "qkv")
        g.nodes.append(g.helper.make_node("Split", [qkv, split], [q, k, v], axis=-1, name=p + "split"))
        ctx = g.op("MultiHeadAttention", [q, k, v], domain="com.microsoft", num_heads=heads, scale=1.0)
        return g.linear(ctx, p + "out_proj", get(p + "out_proj.weight"), get(p + "out_proj.bias"))
    shape = g.const("shape_bt3hd", np.array([0, 0, 3, heads, hd], np.int64))
    qkv = g.op("Reshape", [qkv, shape])                                      # [B, T, 3, H, hd]
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                     # [3, B, H, T, hd]
    split = g.const("split_3", np.array([1, 1, 1], np.int64))
    q, k, v = (f"{p}{n}" for n in "qkv")
    g.nodes.append(g.helper.make_node("Split", [qkv, split], [q + "5", k + "5", v + "5"], axis=0, name=p + "split"))
    axes0 = g.const("axes_0", np.array([0], np.int64))
    q, k, v = (g.op("Squeeze", [t + "5", axes0]) for t in (q, k, v))          # [B, H, T, hd]
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    probs = g.op("Softmax", [g.op("MatMul", [q, kt])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])  # [B, T, H, hd]
    ctx = g.op("Reshape", [ctx, g.const("shape_btd", np.array([0, 0, d], np.int64))])
    return g.linear(ctx, p + "out_proj", get(p + "out_proj.weight"), get(p + "out_proj.bias"))


def build_graph(get, dims, onnx_path: Path, compact: bool = True, contrib_attention: bool = False):
    """Write the float32 graph to onnx_path (+ onnx_path.data).

    compact: weights that are exactly bfloat16 are stored as such behind a Cast (half the
    file, same numbers; engines fold the Cast when they load).
    contrib_attention: attention as ONNX Runtime's fused com.microsoft MultiHeadAttention
    (about 7 % faster there; OpenVINO cannot read it, so only the ONNX Runtime-only int8
    graph uses it)."""
    import onnx
    from onnx import TensorProto, helper

    d, heads, eps = dims.enc_d, dims.enc_heads, dims.enc_ln_eps
    segment_bounds(dims.enc_layers)  # refuses a layer count MuFun cannot read
    v = layout.ENCODER
    g = _Graph(Path(str(onnx_path) + ".data"), compact, contrib_attention)
    try:
        x = g.op("Conv", ["mel", g.const("conv1.weight", get(v + "conv1.weight")),
                          g.const("conv1.bias", get(v + "conv1.bias"))], pads=[1, 1], kernel_shape=[3])
        x = g.op("Gelu", [x])
        x = g.op("Conv", [x, g.const("conv2.weight", get(v + "conv2.weight")),
                          g.const("conv2.bias", get(v + "conv2.bias"))], pads=[1, 1], strides=[2], kernel_shape=[3])
        x = g.op("Transpose", [g.op("Gelu", [x])], perm=[0, 2, 1])            # [B, 1500, d]
        x = g.op("Add", [x, g.const("positions", get(v + "embed_positions.weight"))], "hs0")
        for i in range(dims.enc_layers):
            p = layout.enc_layer(i, "")
            h = g.layer_norm(x, p + "ln1", get(p + "self_attn_layer_norm.weight"),
                             get(p + "self_attn_layer_norm.bias"), eps)
            x = g.op("Add", [x, _attention(g, h, get, p + "self_attn.", d, heads)])
            h = g.layer_norm(x, p + "ln2", get(p + "final_layer_norm.weight"), get(p + "final_layer_norm.bias"), eps)
            h = g.op("Gelu", [g.linear(h, p + "fc1", get(p + "fc1.weight"), get(p + "fc1.bias"))])
            out = f"hs{i + 1}" if i + 1 in FEATURE_LAYERS[1:-1] else None
            x = g.op("Add", [x, g.linear(h, p + "fc2", get(p + "fc2.weight"), get(p + "fc2.bias"))], out)
        g.layer_norm(x, v + "layer_norm", get(v + "layer_norm.weight"), get(v + "layer_norm.bias"), eps,
                     f"hs{FEATURE_LAYERS[-1]}")
    finally:
        g.data.close()
    T = dims.enc_positions
    outputs = [helper.make_tensor_value_info(f"hs{k}", TensorProto.FLOAT, ["batch", T, d]) for k in FEATURE_LAYERS]
    graph = helper.make_graph(g.nodes, "mufun_whisper_encoder",
                              [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", dims.n_mels, 2 * T])],
                              outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib_attention else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mufun-local")
    model.ir_version = 9
    onnx.save_model(model, str(onnx_path))


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic int8 quantisation of the weight MatMuls (per output channel).
    Its scratch folder (ort.quant.*, gigabytes at full size) is made beside `dst`, inside
    the conversion's temporary folder, so a killed conversion's leftovers go with that
    folder instead of staying in /tmp."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.disable(logging.WARNING)  # its advice to run shape pre-processing does not apply here
    scratch, tempfile.tempdir = tempfile.tempdir, str(dst.parent)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})  # 1: FLOAT
    finally:
        tempfile.tempdir = scratch
        logging.disable(logging.NOTSET)


def write_openvino_ir(onnx_path: Path, xml_path: Path) -> None:
    """The same graph in OpenVINO's own format, weights stored at 16 bits behind Converts
    that OpenVINO marks as decompression (what its converter writes by default). Read from
    the ONNX file, OpenVINO folds the bf16 -> f32 Casts into float32 constants and keeps
    them beside the bf16 copies it packs: 5.4 GB resident at full size; from this file,
    2.9 GB, the same speed and the same error against float32 (measured on the full
    preset). The release's bf16 weights pass through float16 exactly for magnitudes from
    2^-17 to 65,504 (Whisper's lie inside; smaller ones lose bits, as they do in bf16 math)."""
    import openvino as ov
    from openvino.passes import ConstantFolding, Manager
    model = ov.Core().read_model(str(onnx_path))
    passes = Manager()
    passes.register_pass(ConstantFolding())
    passes.run_passes(model)
    ov.save_model(model, str(xml_path), compress_to_fp16=True)


def write_onnx_encoder(ckpt, out_dir: Path, progress=None, int8: bool = False) -> dict[str, str]:
    """Write out_dir/encoder.onnx (float32, weights stored as exact bfloat16) and, with
    `int8`, out_dir/encoder.int8.onnx, each with its .data file; where OpenVINO is
    installed, out_dir/encoder.openvino.xml (+ .bin) for its bfloat16 runs. Returns {compute
    type or "openvino": file name}. int8 is opt-in (it loses more than bf16, see
    docs/accuracy.md), and its quantizer doubles a full-size conversion's peak memory."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError("--encoder-backends onnx needs onnx and onnxruntime (not installed: no wheel for this "
                         "platform in the default install); write --encoder-backends ctranslate2") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"float32": "encoder.onnx"}
    build_graph(ckpt.get, ckpt.dims, out_dir / files["float32"])
    if find_spec("openvino") is not None:  # OpenVINO's own 16-bit copy, for its bfloat16 runs
        files["openvino"] = "encoder.openvino.xml"
        write_openvino_ir(out_dir / files["float32"], out_dir / files["openvino"])
    if progress:
        progress(1, 3 if int8 else 1)
    if not int8:
        return files
    files["int8"] = "encoder.int8.onnx"
    tmp = out_dir / "float32-plain.onnx"
    try:
        # quantize_dynamic reads float32 weights; the int8 graph is ONNX Runtime's alone
        build_graph(ckpt.get, ckpt.dims, tmp, compact=False, contrib_attention=True)
        if progress:
            progress(2, 3)
        quantize_int8(tmp, out_dir / files["int8"])
    finally:
        for f in (tmp, Path(str(tmp) + ".data")):
            if f.exists():
                os.unlink(f)
    if progress:
        progress(3, 3)
    return files
