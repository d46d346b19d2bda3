import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.io.checkpoint import Checkpoint
from merging.errors import CheckpointError


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 7, generator=g), "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),
            "c.idx": torch.arange(4, dtype=torch.int64)}


def test_single_file_views_equal_safetensors_load(tmp_path, tensors):
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = Checkpoint(tmp_path)
    reference = load_file(tmp_path / "model.safetensors")
    assert sorted(ckpt.keys()) == sorted(reference)
    for name, tensor in reference.items():
        assert ckpt.shape(name) == tuple(tensor.shape) and ckpt.dtype(name) == tensor.dtype
        assert torch.equal(ckpt.get(name), tensor)
        assert ckpt.nbytes(name) == tensor.numel() * tensor.element_size()


def test_sharded_folder_with_index(tmp_path, tensors):
    save_file({"a.weight": tensors["a.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b.bias": tensors["b.bias"]}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}}))
    ckpt = Checkpoint(tmp_path)
    assert torch.equal(ckpt.get("b.bias"), tensors["b.bias"])
    assert "a.weight" in ckpt and "c.idx" not in ckpt


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        return bytes(data[:-10])
    if how == "header_length":
        return struct.pack("<Q", 10**12) + bytes(data[8:])
    if how == "not_json":
        (n,) = struct.unpack("<Q", data[:8])
        return bytes(data[:8]) + b"{" * n + bytes(data[8 + n:])
    if how == "short":
        return b"\x01\x02"
    raise ValueError(how)


@pytest.mark.parametrize("how,message", [("truncated", "truncated or corrupt"),
                                         ("header_length", "header length"),
                                         ("not_json", "not valid JSON"),
                                         ("short", "too short")])
def test_corrupt_file_is_a_clear_error(tmp_path, tensors, how, message):
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    path.write_bytes(_corrupt(path, how))
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path)


def test_pickle_only_folder_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors"):
        Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="only .safetensors"):
        Checkpoint(tmp_path / "pytorch_model.bin")


def test_missing_shard_named(tmp_path, tensors):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        Checkpoint(tmp_path)


def test_fingerprint_tracks_weights(tmp_path, tensors):
    save_file(tensors, tmp_path / "model.safetensors")
    first = Checkpoint(tmp_path).fingerprint()
    assert Checkpoint(tmp_path).fingerprint() == first  # stable across opens
    changed = dict(tensors, **{"a.weight": tensors["a.weight"] + 1e-3})
    save_file(changed, tmp_path / "model.safetensors")
    assert Checkpoint(tmp_path).fingerprint() != first


def test_fingerprint_samples_large_files(tmp_path):
    big = torch.zeros(2_000_000)  # 8 MB > 64 samples × 64 KiB: sampled, not hashed whole
    save_file({"w": big}, tmp_path / "model.safetensors")
    first = Checkpoint(tmp_path).fingerprint()
    big[:1000] = 1.0  # the first block is always sampled
    save_file({"w": big}, tmp_path / "model.safetensors")
    assert Checkpoint(tmp_path).fingerprint() != first


def test_writes_replace_a_planted_link_and_never_follow_it(tmp_path):
    """A symbolic link planted at an export path (pointing outside the folder) is replaced by the new
    file; the file it pointed to is untouched. The same for safetensors and text files."""
    import torch

    from merging.io.checkpoint import Checkpoint, write_safetensors, write_text_file
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "exports"
    folder.mkdir()
    for name in ("plan.yaml", "model.safetensors"):
        (folder / name).symlink_to(outside)
    write_text_file(folder / "plan.yaml", "rules: []\n")
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    write_safetensors(folder / "model.safetensors", [("t", torch.float32, (2, 3))], lambda name: tensor)
    assert outside.read_text() == "precious"
    assert not (folder / "plan.yaml").is_symlink() and (folder / "plan.yaml").read_text() == "rules: []\n"
    assert torch.equal(Checkpoint(folder / "model.safetensors").get("t"), tensor)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "plan.yaml"]  # no temp files left
