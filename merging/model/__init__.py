"""The model pair: loading, the tensor layout shared by VLM and donor, the known pairs."""
