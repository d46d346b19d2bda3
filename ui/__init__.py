"""Mergescope's browser UI (Gradio 6). Holds no merge logic: everything goes through `merging`."""
