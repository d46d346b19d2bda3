"""Is a difference in accuracy between two models on the same items more than noise?

The exact McNemar test (McNemar 1947; the exact form in Fagerland, Lydersen & Laake 2013): only the
discordant items count — those one model gets right and the other wrong — and under the null
hypothesis each is equally likely to fall either way, so the two-sided p-value is scipy's exact
binomial test of min(b, c) successes in b + c trials at p = ½.
"""

from __future__ import annotations

from scipy.stats import binomtest


def mcnemar(correct_a: list[bool], correct_b: list[bool]) -> dict:
    """{"a_only": items A gets right and B wrong, "b_only": the reverse, "p_value": exact two-sided
    McNemar p-value (1.0 when no item is discordant)} for two correctness lists over the same items.
    Raises ValueError if the lists differ in length."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"McNemar needs the same items: {len(correct_a)} vs {len(correct_b)} verdicts")
    a_only = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    b_only = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    n = a_only + b_only
    p_value = 1.0 if n == 0 else float(binomtest(min(a_only, b_only), n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p_value}
