"""Publish an exported checkpoint on the Hugging Face Hub: `mergescope export ... --push-to-hub OWNER/NAME`.

`check_repo_id` refuses a malformed id before anything is loaded or written; `push_folder` creates the
model repo if it does not exist and uploads the export folder in one commit
(`huggingface_hub.create_repo(exist_ok=True)`, then `huggingface_hub.upload_folder`), with the token of
`huggingface-cli login` or $HF_TOKEN. Both network calls are parameters (`create`, `upload`), defaulting
to huggingface_hub's own: that is the seam the tests stop at (they pass recorders and check every
argument), since the upload itself needs the network and a token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import huggingface_hub
from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from merging.errors import MergescopeError
from merging.limits import brief
from merging.export.model_card import CARD_NAME


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a Hub model id `owner/name`; MergescopeError (one line) otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise MergescopeError(f"--push-to-hub {repo_id!r:.80}: not a Hub repo id ({str(exc).splitlines()[0]})") \
            from None
    if repo_id.count("/") != 1:
        raise MergescopeError(f"--push-to-hub {repo_id!r:.80}: give the repo as owner/name")
    return repo_id


def check_card_sources(card_path: Path) -> None:
    """MergescopeError (one line) when the card's `base_model` names something other than Hub repo ids —
    the local folders a merge of local checkpoints lists (model_card.hub_name): the Hub checks a card's
    metadata on upload and cannot link a path."""
    sources = ModelCard.load(card_path).data.base_model or []
    local = []
    for source in [sources] if isinstance(sources, str) else sources:
        try:
            validate_repo_id(source)
        except HFValidationError:
            local.append(source)
    if local:
        raise MergescopeError(f"{card_path.name}'s base_model names {len(local)} local folder(s) the Hub cannot "
                              f"link ({brief(local[0])}): replace them with the Hub ids of the sources, then push")


def upload_arguments(folder: str | Path, repo_id: str, plan_hash: str) -> dict[str, Any]:
    """The keyword arguments of `huggingface_hub.upload_folder` for an export folder: the whole folder
    (its model card included) as one commit to the model repo `repo_id`. Raises MergescopeError for a bad
    id, a folder that is not an export (no model card), or a card whose base_model is not Hub ids."""
    folder, repo_id = Path(folder), check_repo_id(repo_id)
    if not (folder / CARD_NAME).is_file():
        raise MergescopeError(f"{folder}: no {CARD_NAME} here; push the folder `mergescope export` wrote")
    check_card_sources(folder / CARD_NAME)
    return {"repo_id": repo_id, "folder_path": str(folder), "repo_type": "model",
            "commit_message": f"Mergescope merge (plan {plan_hash})"}


def push_folder(folder: str | Path, repo_id: str, plan_hash: str, private: bool = False,
                create: Callable[..., Any] = huggingface_hub.create_repo,
                upload: Callable[..., Any] = huggingface_hub.upload_folder) -> dict[str, Any]:
    """Create `repo_id` (kept if it exists; `private` for a new one) and upload `folder` to it; returns
    {"repo_id", "url"}. `create` and `upload` are the network calls (see the module docstring). Raises
    MergescopeError for bad input, or with the Hub's reason (one line) when the upload fails."""
    arguments = upload_arguments(folder, repo_id, plan_hash)
    try:
        create(repo_id=arguments["repo_id"], repo_type="model", private=private, exist_ok=True)
        commit = upload(**arguments)
    except (huggingface_hub.errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise MergescopeError(f"upload to {repo_id} failed: {' '.join(str(exc).split())[:200]}") from None
    return {"repo_id": arguments["repo_id"], "url": str(getattr(commit, "commit_url", None)
                                                        or f"https://huggingface.co/{arguments['repo_id']}")}
