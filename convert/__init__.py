"""Converters from an original MuFun checkpoint to the artifacts mufun-local runs.

Installed as ``mufun_local.convert``; one module per artifact (encoder, connector,
llm_gguf), the checkpoint reader, and ``run.convert`` which ties them together atomically.
"""
