"""Merged weights do not drift: the same plans give bit-identical weights on the shipped toy pair.

The expected SHA-256 digests were recorded before the package was restructured (issue 10) and are
re-checked on every run, so a refactor that changes a single bit of a merge fails here. Only methods
built from elementwise IEEE operations (and CPU generators) are pinned: slerp's dot products and
RegMean's solver reduce in an order that depends on the CPU's vector width and BLAS, so their last
bits may differ between machines (they are covered by tolerance tests in test_methods.py).

Re-record after an intended change of numerics: `python tests/test_golden_weights.py`.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from merging import MergeEngine, MergePlan, load_pair

TOY = "assets/toy"
PLANS = {
    "linear-constant-all": {"rules": [{"components": ["all"], "method": "linear",
                                       "curve": {"preset": "constant", "value": 0.6}}]},
    "linear-loglinear-attention": {"rules": [{"components": ["self_attn"], "method": "linear",
                                              "curve": {"preset": "loglinear", "start": 0.0, "end": 0.8}}]},
    "per-group-rules": {"rules": [
        {"components": ["mlp"], "method": "linear", "curve": {"preset": "linear", "start": 0.1, "end": 0.9}},
        {"components": ["self_attn", "norms"], "method": "linear",
         "curve": {"preset": "anchors", "values": [0.0, 0.5, 0.2]}},
        {"components": ["embed_tokens", "lm_head"], "method": "linear",
         "curve": {"preset": "step", "layer": 4, "value": 0.3, "non_layer": 0.25}}]},
    "task-arithmetic": {"rules": [{"components": ["all"], "method": "task_arithmetic",
                                   "curve": {"preset": "constant", "value": 0.5}, "params": {"lambda": 1.3}}]},
    "ties": {"rules": [{"components": ["all"], "method": "ties",
                        "curve": {"preset": "linear", "start": 0.2, "end": 0.7}, "params": {"density": 0.3}}]},
    "dare-linear": {"rules": [{"components": ["self_attn", "mlp"], "method": "dare_linear",
                               "curve": {"preset": "constant", "value": 0.4}, "params": {"density": 0.6, "seed": 7}}]},
    "dare-ties": {"rules": [{"components": ["all"], "method": "dare_ties",
                             "curve": {"preset": "constant", "value": 0.5}, "params": {"density": 0.5}}]},
    # issue 15: the new methods built from elementwise operations, order statistics and CPU generators
    "breadcrumbs-ties": {"rules": [{"components": ["all"], "method": "breadcrumbs_ties",
                                    "curve": {"preset": "linear", "start": 0.2, "end": 0.7},
                                    "params": {"density": 0.7, "gamma": 0.05}}]},
    "della-linear": {"rules": [{"components": ["self_attn", "mlp"], "method": "della_linear",
                                "curve": {"preset": "constant", "value": 0.4}, "params": {"density": 0.5, "seed": 7}}]},
    "ramplus-tl-and-nearswap": {"rules": [
        {"components": ["mlp"], "method": "ramplus_tl", "curve": {"preset": "constant", "value": 0.6},
         "params": {"epsilon": 1e-3, "r": 0.5}},
        {"components": ["self_attn"], "method": "nearswap", "curve": {"preset": "loglinear", "start": 0.1, "end": 1.0},
         "params": {"t": 1e-3}}]},
}
EXPECTED = {
    "linear-constant-all": "56f2a6302496e1f85a4a7e947440d809a40407ba2b3e14bd12c33c15e79ded48",
    "linear-loglinear-attention": "8b95a3a18a7b78a56b3f07eaf806344421a6917b669cabd5e8e47030375d3332",
    "per-group-rules": "35a719640f5134c7e34a4cc589654ec365b6c33cf19d83ee1e11ece1c40e15e1",
    "task-arithmetic": "4dc35b922fb05b186b903692a1c7f4f8123678b64e157e3ce57fbe69148b14e0",
    "ties": "3ac2371659f954fc16331298299d76b07bde6d9ef581e370737eece909d5ef72",
    "dare-linear": "4a55c20a3a7cf31688c57b07f834eb5f5a55e5fd6b121a1354b261be0e53418a",
    "dare-ties": "b904743670a60cc14cb8c2690ad938a4a80a600c36e5e91e1811981ed5f446b6",
    "breadcrumbs-ties": "920503de1ffe6b071bb64f00c77b84707ae77e85f9b27d66b5713c6ccc0e2e06",
    "della-linear": "38a1116b1c6609f1109d45b6f24cdfa7073de926fb86f4aa4309a5343da93863",
    "ramplus-tl-and-nearswap": "0d19240a1d3de054de6b8d2019e7b9b8ac75f7d6a554ea6ee2bb493fceb1ecd3",
}


def merged_digests() -> dict[str, str]:
    """Plan name → SHA-256 over every mergeable VLM tensor (name and raw bytes, in layout order)."""
    pair = load_pair(f"{TOY}/vlm", f"{TOY}/llm", f"{TOY}/seed")
    engine = MergeEngine(pair)
    params = dict(pair.vlm.named_parameters())
    digests = {}
    for name, plan in PLANS.items():
        engine.apply(MergePlan.from_dict(plan))
        h = hashlib.sha256()
        for slot in pair.layout.slots:
            h.update(slot.name.encode())
            h.update(params[slot.name].detach().contiguous().view(torch.uint8).numpy().tobytes())
        digests[name] = h.hexdigest()
    return digests


@pytest.fixture(scope="module")
def digests() -> dict[str, str]:
    return merged_digests()


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_merged_weights_are_bit_identical_to_the_recorded_ones(digests, plan):
    assert digests[plan] == EXPECTED[plan]


if __name__ == "__main__":
    for name, digest in merged_digests().items():
        print(f'    "{name}": "{digest}",')
