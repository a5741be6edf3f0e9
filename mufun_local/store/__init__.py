"""Where models come from: the hub (hub.py), the model cache that resolves `--model` and
converts what it lacks (models.py), and the importance matrix conversion calibrates with
(imatrix.py, the one place that runs the runtime for the converter)."""
