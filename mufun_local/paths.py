"""Where mufun-local keeps what it makes: $MUFUN_HOME, else the platform's user cache folder
(XDG on Linux). Converted models, the audio-embedding and prefix caches and the encoder
measurement all live under it."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """MUFUN_HOME, else the platform's user cache dir (XDG on Linux)."""
    env = os.environ.get("MUFUN_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("mufun-local", appauthor=False))


def models_dir() -> Path:
    """Converted models (`pull`, a hub id or a checkpoint given to --model)."""
    return home() / "models"


def embeddings_dir() -> Path:
    """The audio-embedding cache."""
    return home() / "embeddings"


def prefixes_dir() -> Path:
    """The prefix cache (saved llama.cpp states of prompt + audio)."""
    return home() / "prefixes"


def encoder_choice_file() -> Path:
    """The encoder engines' measurement on this machine (encoder.choice)."""
    return home() / "encoder-choice.json"
