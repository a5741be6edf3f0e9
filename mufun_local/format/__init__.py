"""What a converted model is on disk, shared by the converter and the runtime: neither
imports the other for it. Imports nothing of either."""
