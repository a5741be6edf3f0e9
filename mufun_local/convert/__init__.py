"""Converters from an original MuFun checkpoint to the artifacts mufun-local runs: the
checkpoint reader (read_checkpoint.py), one writer per artifact (write_encoder.py with
write_ct2.py and write_onnx.py, write_connector.py, write_gguf.py), and `run.convert`, which
ties them together atomically. It shares only format/ with the runtime."""
