"""The two scores side by side: `official` (each benchmark's published rule chain) and `strict`.

Items follow the benchmarks' published records (MathVista testmini: gold = the option's *text*,
`precision` for floats, stored as 1.0 in the hub's parquet; MATH-Vision: gold = a letter or LaTeX).
Responses are in the styles real models write; the `PUBLISHED` rows are responses of LLaVA-LLaMA-2-13B
and mPLUG-Owl as published in MathVista's repository (results/<model>/output_<model>.json) with the
`true_false` verdict the official scorer gave them.
"""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem, load_eval_set
from merging.evals.mathvista import most_similar
from merging.evals.numbers import value_of
from merging.evals.scoring import judge, judge_both
from merging.experiments.sweep import cell_row, parse_grid, write_results

ANGLE = EvalItem("mv-3", "∠BOC?", "145°", "multi_choice", ("135°", "140°", "145°", "150°"), benchmark="mathvista")
DEGREES = EvalItem("mv-d", "Angle?", "45°", "multi_choice", ("15°", "30°", "45°", "60°"), benchmark="mathvista")
H = EvalItem("mv-5", "Find m∠H\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122", "97", "multi_choice",
             ("97", "102", "107", "122"), benchmark="mathvista")
YES_NO = EvalItem("mv-8", "Is it greater?", "No", "multi_choice", ("Yes", "No"), benchmark="mathvista")
COUNT = EvalItem("mv-4", "How many objects are left?", "4", "integer", benchmark="mathvista")
CUP = EvalItem("mv-2", "What is the total volume of the measuring cup?", "1000", "integer", benchmark="mathvista")
SPRING = EvalItem("mv-1", "Distance d?", "1.2", "float", precision=1, benchmark="mathvista")
V_CHOICE = EvalItem("v-1", "Which?", "C", "multi_choice", ("2", "4", "6", "8", "10"), benchmark="mathvision")
V_AREA = EvalItem("v-2", "Ratio?", "0.33", "text", benchmark="mathvision")
V_LENGTH = EvalItem("v-3", "Length?", "12", "text", benchmark="mathvision")
V_FRAC = EvalItem("v-4", "Ratio?", "\\frac{1}{2}", "text", benchmark="mathvision")


@pytest.mark.parametrize("response,item,strict,official", [
    # chain-of-thought that ends on the option letter, in the words real models use
    pytest.param("∠A = 110°, so ∠BOC = 90° + 55° = 145°. Therefore, the correct answer is (C) 145°.", ANGLE,
                 True, True, id="cot-correct-answer-is-letter-text"),
    pytest.param("Both bisectors meet at O … The correct answer is choice (C).", ANGLE, True, True,
                 id="cot-choice-letter"),
    pytest.param("Each half-angle adds up. The correct option is therefore (C).", ANGLE, True, True,
                 id="cot-option-is-therefore-letter"),
    pytest.param("The answer is (B) No.", YES_NO, True, True, id="answer-is-letter-and-text"),
    pytest.param("Answer: (C) 45°", DEGREES, True, True, id="answer-colon-letter-degrees"),
    pytest.param("Find m∠H\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122\nAnswer: A", H, True, True,
                 id="letter-echoed-with-question"),
    pytest.param("(D) looks close, but the answer is (B).", ANGLE, False, False, id="wrong-final-letter"),
    # the official fallback: anything without a letter becomes the nearest option by edit distance
    pytest.param("", H, False, True, id="empty-official-nearest-is-shortest-option"),
    pytest.param("", ANGLE, False, False, id="empty-official-nearest-is-not-gold"),
    pytest.param("No idea.", YES_NO, False, True, id="refusal-official-nearest-option"),
    pytest.param("I cannot determine the angle from the image.", ANGLE, False, False, id="refusal-choice"),
    pytest.param("The angle BOC measures 145 degrees in this figure.", ANGLE, True, True,
                 id="option-value-inside-sentence"),
    # numbers: MathVista truncates integers (int(float(x))) and rounds floats at the item's precision
    pytest.param("The total volume of the measuring cup is 1000 ml.", CUP, True, True, id="integer-with-unit"),
    pytest.param("So the answer is 4.7", COUNT, False, True, id="integer-official-truncates"),
    pytest.param("The answer is 1.23", SPRING, True, True, id="float-at-precision"),
    pytest.param("d = 1.5 m", SPRING, False, False, id="float-wrong"),
    pytest.param("The answer is $\\pm 4$", COUNT, False, False, id="plus-minus-is-not-one-value"),
    pytest.param("I'm sorry, I can't count them.", COUNT, False, False, id="refusal-integer"),
    # MATH-Vision: its own extraction and its 2-decimal value comparison
    pytest.param("We get \\boxed{C}", V_CHOICE, True, True, id="mathv-boxed-letter"),
    pytest.param("So the answer is (C).", V_CHOICE, True, True, id="mathv-ends-with-letter"),
    pytest.param("the answer is 6", V_CHOICE, True, True, id="mathv-option-text"),
    pytest.param("The ratio is \\boxed{\\frac{1}{3}}", V_AREA, False, True, id="mathv-official-rounds-to-2-places"),
    pytest.param("the final answer is 12 cm", V_LENGTH, True, False, id="mathv-official-keeps-units"),
    pytest.param("\\boxed{0.5}", V_FRAC, True, True, id="mathv-half-as-fraction"),
    pytest.param("", V_CHOICE, False, False, id="mathv-empty"),
])
def test_official_and_strict_verdicts(response, item, strict, official):
    verdicts = judge_both(response, item)
    assert (verdicts["strict"].correct, verdicts["official"].correct) == (strict, official), verdicts


def test_strict_is_the_default_mode_and_modes_are_checked():
    assert judge("The correct answer is choice (C).", ANGLE) == judge("The correct answer is choice (C).", ANGLE,
                                                                        "strict")
    assert judge("The correct answer is choice (C).", ANGLE).rule == "letter in parentheses"
    with pytest.raises(ValueError, match="mode 'lenient'"):
        judge("C", ANGLE, mode="lenient")


REFUSALS = ["", " ", "I cannot determine the answer.", "I'm sorry, but I can't help with that.",
            "No idea.", "Unable to answer from the image.", "Not enough information is given."]
REFUSAL_ITEMS = [ANGLE, H, YES_NO, COUNT, SPRING, V_CHOICE, V_AREA,
                 EvalItem("l", "Coordinates?", "[1, 2]", "list"), EvalItem("t", "Colour?", "blue", "text")]


@pytest.mark.parametrize("item", REFUSAL_ITEMS, ids=lambda i: i.id)
def test_strict_never_credits_a_refusal_or_an_empty_answer(item):
    assert not any(judge(r, item).correct for r in REFUSALS)


def test_official_multiple_choice_always_lands_on_an_option():
    for response in REFUSALS + ["(Z)", "E", "the fifth one"]:
        assert judge(response, ANGLE, "official").extracted in ANGLE.choices
    # get_most_similar: least edit distance, the first of equally near options
    assert most_similar("", ("bb", "a", "c")) == "a"
    assert most_similar("14O°", ANGLE.choices) == "140°"


# LLaVA-LLaMA-2-13B's published testmini responses and MathVista's published verdicts (pid: record)
PUBLISHED = {
    "2": (CUP, "The total volume of the measuring cup is 250 grams.", False),
    "3": (ANGLE, "Given that ∠A = 110°, we can use the fact that the sum of the interior angles of a triangle is "
                 "180° …\n\nTherefore, the correct answer is (C) 145°.", True),
    "4": (COUNT, "After subtracting all large rubber spheres and big shiny cylinders, there are three small "
                 "objects left on the table.", False),
    "5": (H, "The correct answer is (C) 107.", False),
    "6": (EvalItem("6", "AC?", "6cm", "multi_choice", ("6cm", "7cm", "4cm", "5cm"), benchmark="mathvista"),
          "Based on the given information, the length of AC is 5cm.", False),
    "7": (EvalItem("7", "Time?", "quarter", "multi_choice", ("half", "quarter", "o'clock", "quarter to",
                                                             "quarter past"), benchmark="mathvista"),
          "The correct answer is (C) o'clock.", False),
    "8": (EvalItem("8", "Greater?", "Yes", "multi_choice", ("Yes", "No"), benchmark="mathvista"),
          "The correct answer is (B) No. There are no tiny gray bicycles on the left side of the tiny green "
          "bicycle.", False),
    "9": (EvalItem("9", "Area of C?", "8", "multi_choice", ("15", "13", "11", "8"), benchmark="mathvista"),
          "The correct answer is (B) 13.", False),
    "10": (EvalItem("10", "Which object comes next?", "E", "multi_choice", ("A", "B", "C", "D", "E"),
                    benchmark="mathvista"), "The correct answer is (E) E.", True),
    # mPLUG-Owl-7B (results/mplugowl/output_mplugowl_7b_ft.json): a label outside the options, extracted
    # as given ("C"), then mapped to the nearest option, the gold
    "584": (EvalItem("584", "Who donated more?", "Connor", "multi_choice", ("Connor", "Aubrey"), benchmark="mathvista"),
            "C) Aubrey donated more money to arts education.", True),
}


@pytest.mark.parametrize("pid", PUBLISHED)
def test_official_agrees_with_mathvistas_published_verdicts(pid):
    item, response, published = PUBLISHED[pid]
    assert judge(response, item, "official").correct is published


def _write(tmp_path, **fields):
    record = {"id": "q1", "question": "x?", "answer": "1.2", "answer_type": "float", **fields}
    (tmp_path / "set.jsonl").write_text(json.dumps(record) + "\n")
    return tmp_path / "set.jsonl"


def test_precision_as_float_is_read_as_decimals(tmp_path):
    (item,) = load_eval_set(_write(tmp_path, precision=1.0))
    assert item.precision == 1 and isinstance(item.precision, int)
    assert judge("The answer is 1.23", item).correct and judge("The answer is 1.23", item, "official").correct


@pytest.mark.parametrize("fields,message", [
    ({"precision": 1.5}, "precision must be a whole number"),
    ({"precision": "two"}, "precision must be a whole number"),
    ({"answer": "about one"}, "is not a number"),
    ({"answer": "2.5", "answer_type": "integer"}, "is not an integer"),
    ({"answer": "", "answer_type": "text"}, "the answer is empty"),
    ({"answer": "blue", "answer_type": "multi_choice", "choices": ["red"]}, "needs 2–26 choices"),
    ({"answer": "blue", "answer_type": "multi_choice", "choices": ["red", "green"]}, "neither one of the choices"),
    ({"answer": "F", "answer_type": "multi_choice", "choices": ["red", "green"]}, "neither one of the choices"),
    ({"answer": "red", "answer_type": "text", "choices": ["red", "green"]}, "choices are given"),
    ({"benchmark": "gsm8k"}, "benchmark 'gsm8k'"),
])
def test_a_bad_field_is_one_line_naming_the_item(tmp_path, fields, message):
    with pytest.raises(MergescopeError, match=message) as error:
        load_eval_set(_write(tmp_path, **fields))
    assert "item 0 (id q1)" in str(error.value) and "\n" not in str(error.value)


TEXT = {g: EvalItem("t", "q", g, "text") for g in ("2021", "\\frac{1}{1000000}", "\\frac{1}{2^{99}}", "\\sqrt{1/n}")}


@pytest.mark.parametrize("response,gold,correct,rule", [
    # the reports replayed in issue 23 (Math-Verify #14, #26, #37, #41, #60, #64, #76)
    ("The answer is $\\pm 2021$", "2021", False, "numeric"),            # ± is two answers, never one
    ("\\boxed{2021}", "2021", True, "text"),
    ("\\boxed{\\frac{1}{2000000}}", "\\frac{1}{1000000}", False, "numeric"),  # no absolute 1e-6 for small golds
    ("\\boxed{0.000001}", "\\frac{1}{1000000}", True, "numeric"),            # exact rational comparison
    ("\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", False, "numeric"),   # decided before math-verify
    ("\\boxed{2^{-99}}", "\\frac{1}{2^{99}}", True, "numeric"),
    ("\\boxed{\\frac{1}{\\sqrt{n}}}", "\\sqrt{1/n}", True, "identity check"),  # math-verify refuses it
])
def test_numbers_are_compared_exactly_at_every_scale(response, gold, correct, rule):
    verdict = judge(response, TEXT[gold])
    assert (verdict.correct, verdict.rule) == (correct, rule), verdict


def test_relative_tolerance_holds_for_large_and_small_inexact_values():
    big, small = EvalItem("b", "q", "1.7320508e9", "text"), EvalItem("s", "q", "1.7320508e-9", "text")
    assert judge("\\boxed{\\sqrt{3} \\cdot 10^{9}}", big).correct
    assert judge("\\boxed{\\sqrt{3} \\cdot 10^{-9}}", small).correct
    assert not judge("\\boxed{\\sqrt{3.1} \\cdot 10^{-9}}", small).correct


def _mathvista_shard(tmp_path):
    """Two testmini records in the hub's parquet layout (precision stored as a float, metadata nested)."""
    meta = {"split": "testmini", "language": "english", "source": "Geometry3K", "category": "math-targeted-vqa",
            "context": "geometry diagram", "grade": "high school"}
    rows = [{"pid": "5", "question": "Find m∠H", "choices": ["97", "102", "107", "122"], "precision": None,
             "answer": "97", "question_type": "multi_choice", "answer_type": "text", "query": H.question,
             "metadata": dict(meta, task="geometry problem solving", skills=["algebraic reasoning",
                                                                              "geometry reasoning"])},
            {"pid": "1", "question": "Distance d?", "choices": None, "precision": 1.0, "answer": "1.2",
             "question_type": "free_form", "answer_type": "float", "query": "Hint: one decimal.\nDistance d?",
             "metadata": dict(meta, task="textbook question answering", skills=["scientific reasoning"])}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "testmini-00000-of-00001.parquet")
    return f"mathvista:{tmp_path}"


def test_sweep_rows_report_both_scores_per_task_and_skill(tmp_path):
    items = load_eval_set(_mathvista_shard(tmp_path))
    assert items[1].precision == 1 and items[0].benchmark == "mathvista"
    assert ("task", "GPS") in items[0].groups and ("skill", "ALG") in items[0].groups
    cells, _ = parse_grid("components: {S: [all]}\ncurves: {M: {preset: constant}}\nalphas: [0.5]\n")
    # an empty answer (official: the shortest option, 97, the gold) and a float at the item's precision
    row = cell_row(cells[0], items, {0: {"answer": "", "cached": False},
                                     1: {"answer": "d is 1.23 m", "cached": True}}, "donor")
    assert (row["accuracy"], row["official_accuracy"]) == (0.5, 1.0)
    assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    assert row["by_group"]["task"]["GPS"]["accuracy"] == 0.0 and row["by_group"]["task"]["GPS"]["official_accuracy"] == 1
    assert row["by_group"]["skill"]["SCI"] == row["by_category"]["textbook question answering"]
    assert row["answers"][0]["rule"] == "no answer" and row["answers"][0]["official_extracted"] == "97"
    write_results([row], tmp_path / "out")
    (line,) = csv.DictReader((tmp_path / "out" / "results.csv").open())
    assert (line["strict_accuracy"], line["official_accuracy"]) == ("0.5", "1.0")


@pytest.mark.parametrize("response", ["\\boxed{3^{1000}/7}", "10^{400}", "\\boxed{9^{9^{9^{9}}}}"])
def test_values_beyond_a_double_are_never_a_value(response):
    assert value_of(response.removeprefix("\\boxed{").removesuffix("}")) is None
    for item in (COUNT, SPRING, H):  # judged without an OverflowError, and not credited
        assert not judge_both(response, item)["strict"].correct
