"""The model stage: a bundle (manifest, arrays, sha256s) opened and checked, an inference
backend (onnxruntime, TFLite) per artifact, the score rules, and the scorers that turn a
report interval's windows into one score (one bundle, or several fused)."""
