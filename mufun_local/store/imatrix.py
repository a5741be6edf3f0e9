"""An importance matrix for llama.cpp's quantizer, collected from MuFun prompts (audio
embeddings and questions), as llama.cpp's `llama-imatrix` collects one from text.

For every matrix product of a transformer block (`blk.*` weights), the mean over the rows
of the prompt of each input column's square: the quantizer then spends its precision where
the activations are large (llama_model_quantize_params.imatrix; llama.cpp's
tools/imatrix/imatrix.cpp does the same sums, and its tools/quantize divides by the count).
Text alone cannot do this for MuFun: llama-imatrix reads tokens, and most of a MuFun prompt
is audio rows.

llama.cpp calls back for every node of the graph it computes (the context's `cb_eval`);
for a MUL_MAT on a `blk.` weight with at least 16 rows (what llama-imatrix keeps), the
input is read where it lies (host memory: the weights are not offloaded here).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..errors import ModelError

GGML_TYPE_F32 = 0


class GGMLTensor(ctypes.Structure):
    """The head of ggml.h's `struct ggml_tensor` (fields up to `name`), as the vendored
    llama.cpp of llama-cpp-python 0.3.x lays it out."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


def _mul_mat_op() -> int:
    """GGML_OP_MUL_MAT's value in the loaded ggml (the enum moves between versions)."""
    from llama_cpp._ggml import libggml
    libggml.ggml_op_name.restype = ctypes.c_char_p
    libggml.ggml_op_name.argtypes = [ctypes.c_int]
    for op in range(200):
        if libggml.ggml_op_name(op) == b"MUL_MAT":
            return op
    raise ModelError("this llama.cpp build has no MUL_MAT op (importance matrix not available)")


def _weight_name(node_name: str) -> str:
    """The weight's name in a graph node's name ("prefix#name#suffix"), as llama-imatrix reads it."""
    return node_name.split("#")[1] if "#" in node_name else node_name


class Collector:
    """Sums of squared inputs per weight; `callback` goes into the context's cb_eval."""

    def __init__(self):
        import llama_cpp
        self.mul_mat = _mul_mat_op()
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)
        self.error: BaseException | None = None

    def _on_node(self, t_ptr, ask, _user) -> bool:
        try:
            t = GGMLTensor.from_address(t_ptr)
            if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
                return False
            w = GGMLTensor.from_address(t.src[0])
            x = GGMLTensor.from_address(t.src[1])
            name = _weight_name(w.name.decode("utf-8", "replace"))
            if ask:  # a dense model's weight products: 2-D inputs [rows, cols]
                return (x.ne[1] >= 16 and x.ne[2] == 1 and x.ne[3] == 1 and x.type == GGML_TYPE_F32
                        and name.startswith("blk."))
            if not x.data or x.nb[0] != 4:
                return True
            cols, rows = int(x.ne[0]), int(x.ne[1])
            # rows are nb[1] bytes apart (a view may pad them)
            buf = (ctypes.c_char * (int(x.nb[1]) * (rows - 1) + cols * 4)).from_address(x.data)
            a = np.ndarray((rows, cols), np.float32, buf, strides=(int(x.nb[1]), 4))
            sq = np.einsum("ij,ij->j", a, a, dtype=np.float64)
            if name in self.sums:
                self.sums[name] += sq
                self.counts[name] += rows
            else:
                self.sums[name], self.counts[name] = sq, rows
        except BaseException as exc:  # never let an exception cross into C
            self.error = self.error or exc
        return True

    def result(self) -> dict[str, np.ndarray]:
        """Mean squared input per column of each weight (what the quantizer takes)."""
        if self.error is not None:
            raise ModelError(f"importance matrix: {self.error}")
        if not self.sums:
            raise ModelError("importance matrix: no matrix product was seen (prompts shorter than 16 rows?)")
        out = {}
        for name, s in self.sums.items():
            v = (s / self.counts[name]).astype(np.float32)
            if not np.isfinite(v).all():
                raise ModelError(f"importance matrix: non-finite values for {name}")
            out[name] = v
        return out


def collect(gguf: Path, prompts: list[tuple[list[int], np.ndarray, list[int]]], threads: int = 0,
            progress=None) -> dict[str, np.ndarray]:
    """The importance matrix of `gguf` (an F16 or F32 GGUF) over `prompts`: each (text ids
    before the audio, audio embeddings [n, hidden], text ids after), evaluated in turn as
    the pipeline evaluates a question. `progress(done, total)` after each prompt."""
    from ..llm.llama import LLM

    col = Collector()
    llm = LLM(gguf, threads=threads, quant="f16")
    llm.logits_every_row = True
    try:
        n_ctx = max(len(h) + len(e) + len(t) for h, e, t in prompts) + 8
        llm.open_context(n_ctx, 512, eval_callback=col.callback)
        for k, (head, emb, tail) in enumerate(prompts):
            llm.reset()
            if head:
                llm.eval_tokens(head, logits_at_end=False)
            if len(emb):
                llm.eval_embeddings(emb)
            if tail:
                llm.eval_tokens(tail)
            if progress:
                progress(k + 1, len(prompts))
    finally:
        llm.close()
    return col.result()


# One question per calibration song, in turn: what MuFun is asked about (the tag schema's topics)
CALIBRATION_QUESTIONS = ("What genre is this?", "Which instruments can you hear?", "What is the mood of this song?",
                         "Is there singing, and in which language?", "How does the song develop over time?",
                         "Describe the rhythm and the tempo.")


def calibration_prompts(model, vocab_file: Path, audio: list[str], seconds: float, threads: int = 0):
    """(text before, audio embeddings, text after) for each file's first `seconds`, asked one
    of the calibration questions, with `model`'s encoder, connector and template (`model`: a
    ModelDir; its LLM need not exist yet)."""
    from ..llm import prompt
    from ..encoder.embedder import AudioEmbedder, AudioInput
    from ..llm.llama import Vocab
    from ..pipeline import Options

    embedder = AudioEmbedder(model, Options(threads=threads))
    try:
        embeddings = []
        for f in audio:
            e = embedder.embed(AudioInput(str(f), segs=(0.0, seconds)))
            embeddings.append(e.embeddings[: max(16, int(round(min(e.seconds, seconds) * 10)))])
    finally:
        embedder.release()
    tmpl = prompt.Template.of(model.manifest)
    vocab = Vocab(vocab_file)
    try:
        out = []
        for i, emb in enumerate(embeddings):
            head, tail = prompt.tokenize(prompt.build(CALIBRATION_QUESTIONS[i % len(CALIBRATION_QUESTIONS)], 1, tmpl),
                                         vocab.tokenize)
            out.append((head, emb, tail))
        return out
    finally:
        vocab.close()


def calibrator(audio: list[str] | None = None, songs: int = 4, seconds: float = 20.0, threads: int = 0):
    """The converter's `calibrate` (convert.run.convert): an importance matrix over `audio`
    (the first `seconds` of each file), or over `songs` generated songs (chords, a beat and
    noise: mufun_local.synthetic.song) when none is given."""
    def calibrate(model, f16: Path):
        import tempfile

        from ..synthetic import song
        with tempfile.TemporaryDirectory(prefix="mufun-calibration-") as tmp:
            files = list(audio) if audio else [str(song(Path(tmp) / f"song{i}.wav", seconds, seed=1000 + i))
                                               for i in range(songs)]
            prompts = calibration_prompts(model, f16, files, seconds, threads)
        made_from = (f"{len(files)} given file(s)" if audio else f"{len(files)} generated songs") + f", {seconds:g} s each"
        return collect(f16, prompts, threads), made_from
    return calibrate


def save(path: Path, imatrix: dict[str, np.ndarray]) -> None:
    np.savez(path, **imatrix)


def load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not an importance matrix ({exc})") from None
