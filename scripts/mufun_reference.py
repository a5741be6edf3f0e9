"""PyTorch reference of MuFun inference: the oracle for parity tests and benchmarks.

It follows the original release step by step (laitselec/MuFun: ``load_audio_single`` in
tinyllava/data/image_preprocess.py, the whisper vision tower, the ``blp`` connector and
``prepare_inputs_labels_for_multimodal`` of modeling_tinyllava.py): ffmpeg decode at the
native rate, torchaudio's resample (a faithful copy below: torchaudio has no wheel for the
torch this project tests with), 30 s windows, WhisperFeatureExtractor(feature_size=128),
transformers' WhisperEncoder with ``output_hidden_states``, layers 0/7/15/32 concatenated,
AvgPool1d(5), Linear-GELU-Linear, the audio embeddings spliced at each ``<audio>``, and
Qwen3ForCausalLM with greedy decoding.

Needs the ``reference`` extra (torch, transformers). It lives in scripts/, outside the
installed package: the runtime never imports it; tests/conftest.py puts scripts/ on the path.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
CLIP_SAMPLES = 30 * SAMPLE_RATE
CLIP_DROP = SAMPLE_RATE // 2
FEATURE_LAYERS = (0, 7, 15, 32)
POOL_STRIDE = 5
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


# ------------------------------------------------------------- torchaudio resample (copy)


def _get_sinc_resample_kernel(orig_freq, new_freq, gcd, lowpass_filter_width=6, rolloff=0.99,
                              device=torch.device("cpu"), dtype=None):
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    base_freq = min(orig_freq, new_freq) * rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    idx = torch.arange(-width, width + orig_freq, dtype=idx_dtype, device=device)[None, None] / orig_freq
    t = torch.arange(0, -new_freq, -1, dtype=dtype, device=device)[:, None, None] / new_freq + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig_freq
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(dtype=torch.float32)
    return kernels, width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """torchaudio.functional.resample with its defaults (sinc_interp_hann, width 6, 0.99)."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    kernel, width = _get_sinc_resample_kernel(orig_freq, new_freq, gcd, device=waveform.device,
                                              dtype=waveform.dtype)
    o, n = int(orig_freq) // gcd, int(new_freq) // gcd
    shape = waveform.size()
    waveform = waveform.view(-1, shape[-1])
    num_wavs, length = waveform.shape
    waveform = torch.nn.functional.pad(waveform, (width, width + o))
    out = torch.nn.functional.conv1d(waveform[:, None], kernel, stride=o)
    out = out.transpose(1, 2).reshape(num_wavs, -1)
    target_length = torch.ceil(torch.as_tensor(n * length / o)).long()
    out = out[..., :target_length]
    return out.view(shape[:-1] + out.shape[-1:])


# ------------------------------------------------------------- audio, as the original


def load_audio_single(path: str, seg=None) -> list[np.ndarray]:
    """The original's decode → segs → resample → 30 s pieces (ffmpeg CLI + mutagen)."""
    import mutagen
    from transformers.pipelines.audio_utils import ffmpeg_read

    rate = mutagen.File(path).info.sample_rate
    with open(path, "rb") as fh:
        audio = ffmpeg_read(fh.read(), rate)
    if seg is not None:
        audio = audio[int(seg[0] * rate):int(seg[1] * rate)]
    if rate != SAMPLE_RATE:
        audio = resample(torch.from_numpy(audio.copy()), rate, SAMPLE_RATE).numpy()
    return split_windows(audio)


def split_windows(audio: np.ndarray) -> list[np.ndarray]:
    if len(audio) <= CLIP_SAMPLES:
        return [audio]
    return [audio[i:i + CLIP_SAMPLES] for i in range(0, len(audio), CLIP_SAMPLES)
            if len(audio[i:i + CLIP_SAMPLES]) > CLIP_DROP]


def feature_extractor():
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(feature_size=128)


def log_mel(windows: list[np.ndarray]) -> torch.Tensor:
    """[windows, 128, 3000], one call per window as the original's ImagePreprocess does."""
    fe = feature_extractor()
    return torch.cat([fe(w, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
                      for w in windows])


# ------------------------------------------------------------- the model


def _read_shards(ckpt: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update({k: v.to(dtype) for k, v in load_file(str(ckpt / shard)).items()})
    return state


class Connector(nn.Module):
    """The ``blp_{i}i_{h}x`` connector: Linear(i*d -> h*i*d), GELU, Linear(-> hidden)."""

    def __init__(self, vdim: int, hx: int, ldim: int):
        super().__init__()
        self.linear1 = nn.Linear(vdim, hx * vdim)
        self.act = nn.GELU()
        self.linear2 = nn.Linear(hx * vdim, ldim)

    def forward(self, x):
        return self.linear2(self.act(self.linear1(x)))


@dataclass
class Answer:
    text: str
    tokens: list[int]
    first_logits: np.ndarray
    prompt_tokens: int
    audio_tokens: int


class ReferenceMuFun:
    """MuFun from a checkpoint in the original format, in float32 (parity) or bf16."""

    def __init__(self, ckpt: str | Path, dtype: torch.dtype = torch.float32):
        from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        ckpt = Path(ckpt)
        self.config = json.loads((ckpt / "config.json").read_text())
        self.dtype = dtype
        state = _read_shards(ckpt, dtype)

        # Modules are built on the meta device and take the loaded tensors as they are
        # (assign=True): no second copy of the weights, so the 8B model fits in bf16 on 24 GB.
        wcfg = WhisperConfig(**self.config["vision_config"])
        with torch.device("meta"):
            self.encoder = WhisperEncoder(wcfg)
        self._load(self.encoder, state, "vision_tower._vision_tower.")

        import re
        ix, hx = map(int, re.findall(r"(\d+)[ix]", self.config["connector_type"]))
        vdim = self.config["vision_hidden_size"] * ix
        with torch.device("meta"):
            self.connector = Connector(vdim, hx, self.config["hidden_size"])
        self._load(self.connector, state, "connector._connector.")

        qcfg = Qwen3Config(**self.config["text_config"])
        with torch.device("meta"):
            self.llm = Qwen3ForCausalLM(qcfg)
        self._load(self.llm, state, "language_model.")
        # the rotary table is computed, not stored: build it for real
        self.llm.model.rotary_emb = type(self.llm.model.rotary_emb)(config=qcfg)
        del state
        self.tokenizer = Qwen2Tokenizer.from_pretrained(str(ckpt))
        self.stop_ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         self.tokenizer.convert_tokens_to_ids("<|endoftext|>")}

    @staticmethod
    def _load(module: nn.Module, state: dict, prefix: str) -> None:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(sub, strict=False, assign=True)
        missing = [m for m in missing if "rotary" not in m]
        if missing or unexpected:
            raise ValueError(f"{prefix}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        module.eval()

    # -- audio half
    @torch.no_grad()
    def hidden_states(self, mel: torch.Tensor) -> list[torch.Tensor]:
        out = self.encoder(mel.to(self.dtype), output_hidden_states=True).hidden_states
        return [out[i] for i in FEATURE_LAYERS]

    @torch.no_grad()
    def embed_windows(self, mel: torch.Tensor) -> torch.Tensor:
        """[windows, 128, 3000] log-mel -> [windows * 300, hidden] audio embeddings."""
        hs = torch.cat(self.hidden_states(mel), dim=-1)
        pooled = nn.functional.avg_pool1d(hs.permute(0, 2, 1), POOL_STRIDE, POOL_STRIDE).permute(0, 2, 1)
        return self.connector(pooled).reshape(-1, self.config["hidden_size"])

    def embed_audio(self, path: str, seg=None) -> torch.Tensor:
        return self.embed_windows(log_mel(load_audio_single(path, seg)))

    # -- language half
    def prompt(self, question: str) -> str:
        user = question if "<audio>" in question else "<audio>" + question
        return f"{SYSTEM} USER: \n{user} ASSISTANT:"

    def prompt_ids(self, question: str) -> list[list[int]]:
        """Token ids of the text between <audio> markers (each chunk tokenized alone)."""
        return [self.tokenizer(chunk, add_special_tokens=False).input_ids
                for chunk in self.prompt(question).split("<audio>")]

    def _prompt_embeds(self, question: str, audio_embeddings: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
        """The prompt's input embeddings [positions, hidden] (text pieces around the audios)."""
        chunks = self.prompt_ids(question)
        if len(chunks) - 1 != len(audio_embeddings):
            raise ValueError("one <audio> marker per audio is needed")
        table = self.llm.get_input_embeddings()
        parts = []
        for i, ids in enumerate(chunks):
            parts.append(table(torch.tensor(ids, dtype=torch.long)))
            if i < len(audio_embeddings):
                parts.append(audio_embeddings[i].to(self.dtype))
        return torch.cat(parts), chunks

    @torch.no_grad()
    def generate_from_embeddings(self, question: str, audio_embeddings: list[torch.Tensor],
                                 max_tokens: int = 32) -> Answer:
        embeds, chunks = self._prompt_embeds(question, audio_embeddings)
        out = self.llm(inputs_embeds=embeds[None], use_cache=True)
        first = out.logits[0, -1].float().numpy().copy()
        tokens: list[int] = []
        past, logits = out.past_key_values, out.logits[0, -1]
        for _ in range(max_tokens):
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            if nxt in self.stop_ids:
                break
            out = self.llm(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
        text_ids = [t for t in tokens if t not in self.stop_ids]
        return Answer(text=self.tokenizer.decode(text_ids), tokens=tokens, first_logits=first,
                      prompt_tokens=sum(map(len, chunks)),
                      audio_tokens=sum(int(a.shape[0]) for a in audio_embeddings))

    @torch.no_grad()
    def forced_logits(self, question: str, audio_embeddings: list[torch.Tensor], tokens: list[int]) -> np.ndarray:
        """The next-token logits before each of `tokens` when the answer is forced to be
        `tokens` ([len(tokens), vocab], float32): one forward pass over prompt + answer."""
        embeds, _ = self._prompt_embeds(question, audio_embeddings)
        answer = self.llm.get_input_embeddings()(torch.tensor(tokens[:-1], dtype=torch.long))
        prompt_len = int(embeds.shape[0])
        logits = self.llm(inputs_embeds=torch.cat([embeds, answer])[None]).logits[0]
        return logits[prompt_len - 1:prompt_len - 1 + len(tokens)].float().numpy().copy()

    def ask(self, audio_paths: list[str], question: str, segs=None, max_tokens: int = 32) -> Answer:
        segs = segs or [None] * len(audio_paths)
        embs = [self.embed_audio(p, s) for p, s in zip(audio_paths, segs)]
        return self.generate_from_embeddings(question, embs, max_tokens)
