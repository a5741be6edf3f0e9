"""The audio stage: a file (or bytes, or samples) -> 16 kHz mono -> 30 s windows -> log-mels.
decode.py decodes and resamples exactly as the original does (PyAV for ffmpeg's CLI, a
torchaudio-equal resampler); features.py is the log-mel (WhisperFeatureExtractor's math);
windows.py overlaps decoding with it."""
