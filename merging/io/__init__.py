"""Files in and out: safetensors checkpoints (read lazily, written in shards), quantized tensors, images."""
