"""The exported model card as the Hub reads it (huggingface_hub's own ModelCard parser), and
`export --push-to-hub`: everything up to the upload, which needs the network and a token."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData

from merging import MergeEngine, MergePlan, MergescopeError, load_pair
from merging.__main__ import main
from merging.export.hub import push_folder, upload_arguments
from merging.export.model_card import hub_name
from merging.export.writer import export_checkpoint

PLAN = MergePlan.from_dict({"rules": [
    {"components": ["self_attn"], "method": "linear", "curve": {"preset": "linear", "start": 0.0, "end": 0.7}}]})


@pytest.fixture(scope="module")
def export_dir(qwen_dirs, tmp_path_factory):
    pair = load_pair(*qwen_dirs)
    out = tmp_path_factory.mktemp("card") / "merged"
    export_checkpoint(MergeEngine(pair), PLAN, out)
    return pair, out


def test_the_card_carries_hub_metadata(export_dir):
    pair, out = export_dir
    card = ModelCard((out / "README.md").read_text())
    data = card.data.to_dict()
    assert data["base_model"] == [str(pair.vlm_files.path), str(pair.donor.path)]  # local folders: their paths
    assert data["base_model_relation"] == "merge"
    assert data["tags"] == ["merge", "mergescope", "linear"]
    assert (data["library_name"], data["pipeline_tag"]) == ("transformers", "image-text-to-text")
    assert ModelCardData(**data).to_dict() == data  # what the Hub's parser reads back, it can write again
    text = card.text
    for needed in (pair.vlm_files.fingerprint(), pair.donor.fingerprint(), PLAN.hash(), "```yaml"):
        assert needed in text, needed
    mergekit = (out / "mergekit.yaml").read_text()
    assert mergekit.rstrip() in text  # the mergekit configuration, as written beside it
    assert yaml.safe_load(mergekit)["merge_method"] == "linear"


def test_hub_ids_from_the_hf_cache():
    snapshot = Path("/home/u/.cache/huggingface/hub/models--Qwen--Qwen2.5-VL-3B-Instruct/snapshots/abc123")
    assert hub_name(snapshot) == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert hub_name(Path("/data/my-vlm")) == "/data/my-vlm"


def with_hub_sources(export_dir, tmp_path) -> Path:
    """A copy of the export whose card names its sources by Hub ids, as a user edits a merge of local folders."""
    pair, out = export_dir
    copy = tmp_path / "merged"
    shutil.copytree(out, copy)
    card = (copy / "README.md").read_text()
    for path, repo in ((pair.vlm_files.path, "someone/tiny-vlm"), (pair.donor.path, "someone/tiny-llm")):
        card = card.replace(f"- {path}\n", f"- {repo}\n", 1)
    (copy / "README.md").write_text(card)
    return copy


def test_push_prepares_the_upload_of_the_whole_folder(export_dir, tmp_path):
    """The seam: `create` and `upload` are huggingface_hub.create_repo and upload_folder by default;
    here recorders take their arguments instead of the network."""
    out = with_hub_sources(export_dir, tmp_path)
    assert ModelCard.load(out / "README.md").data.base_model == ["someone/tiny-vlm", "someone/tiny-llm"]
    calls = []
    report = push_folder(out, "someone/merged-vlm", PLAN.hash(), private=True,
                         create=lambda **kw: calls.append(("create", kw)),
                         upload=lambda **kw: calls.append(("upload", kw)))
    assert calls == [("create", {"repo_id": "someone/merged-vlm", "repo_type": "model", "private": True,
                                 "exist_ok": True}),
                     ("upload", {"repo_id": "someone/merged-vlm", "folder_path": str(out), "repo_type": "model",
                                 "commit_message": f"Mergescope merge (plan {PLAN.hash()})"})]
    assert report == {"repo_id": "someone/merged-vlm", "url": "https://huggingface.co/someone/merged-vlm"}


@pytest.mark.parametrize("repo", ["bad id", "a/b/c", "-x/y", "just-a-name"])
def test_bad_repo_ids_are_refused_in_one_line(export_dir, repo):
    _, out = export_dir
    with pytest.raises(MergescopeError) as info:
        upload_arguments(out, repo, PLAN.hash())
    assert "--push-to-hub" in str(info.value) and "\n" not in str(info.value)


def test_a_card_naming_local_folders_is_refused_before_any_upload(export_dir):
    _, out = export_dir  # the toy's sources are local folders: the card names their paths
    calls = []
    with pytest.raises(MergescopeError, match=r"base_model names 2 local folder\(s\) the Hub cannot link") as info:
        push_folder(out, "someone/merged-vlm", PLAN.hash(), create=calls.append, upload=calls.append)
    assert calls == [] and "\n" not in str(info.value)


def test_a_folder_that_is_no_export_is_refused(tmp_path):
    with pytest.raises(MergescopeError, match="no README.md here"):
        upload_arguments(tmp_path, "someone/merged", "abc")


def test_export_command_refuses_a_bad_repo_before_writing(qwen_dirs, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.to_yaml())
    out = tmp_path / "merged"
    code = main(["export", "--vlm", str(qwen_dirs[0]), "--llm", str(qwen_dirs[1]), "--plan", str(plan),
                 "--out", str(out), "--push-to-hub", "not a repo", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --push-to-hub 'not a repo'") and len(err.splitlines()) == 1
    assert not out.exists()  # refused before the model loads: nothing written
