"""Agreement of `judge(..., "official")` and `judge(..., "strict")` with MathVista's published verdicts.

Reads MathVista output files in the layout the benchmark publishes (github.com/lupantech/MathVista,
`results/<model>/output_<model>.json`: {pid: record} with `response`, `choices`, `answer`,
`question_type`, `answer_type`, `precision`, `metadata` and the official `true_false`), judges each
`response` against the record as an `EvalItem`, and compares with `true_false`. Prints one JSON object:

  files, records              how many files and records were read (records without true_false skipped)
  official_agreement          share of records where the official verdict equals true_false
  strict_agreement            the same for the strict verdict
  per_file                    {file: {records, official_agreement, strict_agreement}}
  official_disagreements      up to 20 {file, pid, response tail, published, official, extracted, rule}

The published verdicts come from GPT-4's extraction; `official` replaces that step by rules, so the
agreement measures how close the rule extraction gets. The project ships no such file except the small
transcribed sample `benchmarks/data/mathvista_published_sample.json` (the default input).
Run: python benchmarks/mathvista_agreement.py [OUTPUT.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from merging.evals.eval_checks import checked, mathvista_groups
from merging.evals.eval_sets import EvalItem
from merging.evals.scoring import judge_both

DEFAULT = Path(__file__).parent / "data" / "mathvista_published_sample.json"


def _item(pid: str, rec: dict, where: str) -> EvalItem:
    kind = "multi_choice" if rec.get("question_type") == "multi_choice" else rec.get("answer_type", "text")
    return checked(EvalItem(pid, rec.get("query") or rec.get("question", ""), str(rec["answer"]), kind,
                            tuple(str(c) for c in rec.get("choices") or ()), rec.get("precision"),
                            benchmark="mathvista", groups=mathvista_groups(rec.get("metadata") or {})), where)


def main(sources: dict[str, dict]) -> dict:
    """`sources`: {name: {pid: record}} — one published output file each."""
    per_file, disagreements, total = {}, [], {"records": 0, "official": 0, "strict": 0}
    for name, records in sources.items():
        counts = {"records": 0, "official": 0, "strict": 0}
        for pid, rec in records.items():
            if "true_false" not in rec or rec.get("response") is None:
                continue
            verdicts = judge_both(rec["response"], _item(pid, rec, f"{name}: {pid}"))
            counts["records"] += 1
            for mode in ("official", "strict"):
                counts[mode] += verdicts[mode].correct == bool(rec["true_false"])
            if verdicts["official"].correct != bool(rec["true_false"]) and len(disagreements) < 20:
                disagreements.append({"file": name, "pid": pid, "response": rec["response"][-160:],
                                      "published": rec["true_false"], "official": verdicts["official"].correct,
                                      "extracted": verdicts["official"].extracted, "rule": verdicts["official"].rule,
                                      "published_extraction": rec.get("extraction")})
        share = {f"{m}_agreement": counts[m] / max(1, counts["records"]) for m in ("official", "strict")}
        per_file[name] = {"records": counts["records"], **share}
        for k in total:
            total[k] += counts[k]
    return {"files": len(sources), "records": total["records"],
            "official_agreement": total["official"] / max(1, total["records"]),
            "strict_agreement": total["strict"] / max(1, total["records"]),
            "per_file": per_file, "official_disagreements": disagreements}


if __name__ == "__main__":
    # the shipped sample holds several models' records as {model: {pid: record}}
    chosen = {Path(a).name: json.loads(Path(a).read_text()) for a in sys.argv[1:]} \
        or {k: v for k, v in json.loads(DEFAULT.read_text()).items() if not k.startswith("_")}
    print(json.dumps(main(chosen), indent=1, ensure_ascii=False))
