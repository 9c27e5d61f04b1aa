"""Local models: the models directory, quantization, downloads, lifecycle and engines."""
