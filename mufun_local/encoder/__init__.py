"""The audio half after the log-mels: the Whisper encoder's hidden states 0/7/15/32 (one
engine per module, base.py their interface, backends.py the registry, choice.py the timed
`auto`), the connector (pooling + MLP), and embedder.py tying them together with the
embedding cache (embcache.py)."""
