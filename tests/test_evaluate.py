"""Judging real-format answers (merging.evals.scoring) and the eval-set loaders' file layouts."""

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem, load_eval_set
from merging.evals.scoring import Verdict, extract_answer, judge

MV_CHOICE = EvalItem("mv-1", "Which is larger?", "1.5", "multi_choice", ("0.5", "1.5", "2.5"))
MV_INT = EvalItem("mv-2", "How many?", "4", "integer")
MV_FLOAT1 = EvalItem("mv-3", "What is x?", "1.2", "float", precision=1)
MV_FLOAT2 = EvalItem("mv-4", "What is y?", "0.57", "float", precision=2)
MV_LIST = EvalItem("mv-5", "Coordinates?", "[1, 2.5]", "list")
MATHV_CHOICE = EvalItem("v-1", "Which?", "C", "multi_choice", ("2", "4", "6", "8", "10"))
MATHV_FREE = EvalItem("v-2", "Area?", "12", "text")
MATHV_EXPR = EvalItem("v-3", "Simplify", "\\frac{1}{2}", "text")


@pytest.mark.parametrize("response,item,extracted,correct", [
    # MathVista multiple choice: letter, option text, letter with punctuation, wrong letter
    ("B", MV_CHOICE, "B", True),
    ("(B) 1.5", MV_CHOICE, "B", True),
    ("The answer is 1.5.", MV_CHOICE, "B", True),
    ("Answer: A", MV_CHOICE, "A", False),
    # integers
    ("4", MV_INT, "4", True),
    ("There are 4 objects. The answer is 4", MV_INT, "4", True),
    ("The answer is 4.0", MV_INT, "4", True),
    ("The answer is 5", MV_INT, "5", False),
    ("I cannot tell", MV_INT, "I cannot tell", False),
    # floats at the stated precision
    ("1.2", MV_FLOAT1, "1.2", True),
    ("The answer is 1.23", MV_FLOAT1, "1.2", True),
    ("1.26", MV_FLOAT1, "1.3", False),
    ("0.571", MV_FLOAT2, "0.57", True),
    ("0.5", MV_FLOAT2, "0.5", False),
    # lists
    ("[1, 2.5]", MV_LIST, "[1.0, 2.5]", True),
    ("[2.5, 1]", MV_LIST, "[2.5, 1.0]", False),
    # MATH-Vision: \boxed{} and "the answer is"; letters for options
    ("Since the sides are 3 and 4, the area is \\boxed{12}.", MATHV_FREE, "12", True),
    ("so the answer is 12", MATHV_FREE, "12", True),
    ("\\boxed{12.0}", MATHV_FREE, "12.0", True),
    ("\\boxed{13}", MATHV_FREE, "13", False),
    ("We get \\boxed{C}", MATHV_CHOICE, "C", True),
    ("The answer is (C)", MATHV_CHOICE, "C", True),
    ("The answer is 6", MATHV_CHOICE, "C", True),
    ("\\boxed{D}", MATHV_CHOICE, "D", False),
    ("\\boxed{\\frac{1}{2}}", MATHV_EXPR, "\\frac{1}{2}", True),
    ("the answer is $\\frac{1}{3}$", MATHV_EXPR, "\\frac{1}{3}", False),
])
def test_existing_scoring_table(response, item, extracted, correct):
    verdict = judge(response, item)
    assert (verdict.extracted, verdict.correct) == (extracted, correct)


# Real-format responses, one KIND of fault per id prefix. Items follow the benchmarks' published
# records: MathVista gives the option *text* as gold and a `precision` for floats; MATH-Vision gives a
# letter for options and LaTeX or plain text for free-form answers.
SHAPES = EvalItem("mv-s", "Which shape?", "a square", "multi_choice", ("circle", "a square", "triangle"))
ANGLE = EvalItem("v-a", "Which angle?", "C", "multi_choice", ("30", "45", "60", "90", "120"))
YESNO = EvalItem("mv-y", "Is it?", "No", "multi_choice", ("Yes", "No"))
THREE = EvalItem("mv-3c", "Which?", "B", "multi_choice", ("red", "green", "blue"))
LENGTH = EvalItem("mv-l", "How long?", "6 cm", "multi_choice", ("4 cm", "6 cm", "8 cm", "10 cm"))
FRACS = EvalItem("v-f", "Which?", "B", "multi_choice", ("1/3", "1/2", "2/3", "3/4", "1"))
NEG = EvalItem("mv-n", "Value?", "-5", "integer")
FIVE = EvalItem("mv-5", "How many cubes?", "5", "integer")
BIG = EvalItem("mv-b", "Population?", "12000", "integer")
HALF = EvalItem("mv-h", "Ratio?", "0.5", "float", precision=1)
PCT = EvalItem("mv-p", "Share?", "25", "integer")
DEG = EvalItem("mv-d", "Angle?", "60", "integer")
PI3 = EvalItem("mv-pi", "Value?", "1.05", "float", precision=2)
ROOT = EvalItem("mv-r", "Length?", "1.73", "float", precision=2)
V_FRAC = EvalItem("v-fr", "Ratio?", "\\frac{1}{2}", "text")
V_SLASH = EvalItem("v-sl", "Ratio?", "1/2", "text")
V_ROOT = EvalItem("v-rt", "Length?", "2\\sqrt{3}", "text")
V_EXPR = EvalItem("v-ex", "f(x)?", "x^2+1", "text")
V_PI = EvalItem("v-pi", "Angle?", "\\frac{\\pi}{3}", "text")
V_INT = EvalItem("v-in", "How many?", "7", "text")
V_WORD = EvalItem("v-w", "Which colour?", "blue", "text")
V_DEG = EvalItem("v-dg", "Angle?", "30^\\circ", "text")
V_CM = EvalItem("v-cm", "Length?", "12 \\text{ cm}", "text")
LIST = EvalItem("mv-li", "Coordinates?", "[3, -1]", "list")


@pytest.mark.parametrize("response,item,extracted,correct", [
    # letters vs option text
    pytest.param("A square.", SHAPES, "B", True, id="option-text-not-letter-A"),
    pytest.param("a square", SHAPES, "B", True, id="option-text-lowercase"),
    pytest.param("A", SHAPES, "A", False, id="option-text-bare-letter-wrong"),
    pytest.param("B", SHAPES, "B", True, id="option-text-bare-letter"),
    pytest.param("(B) a square", SHAPES, "B", True, id="option-text-letter-and-text"),
    pytest.param("B a square", SHAPES, "B", True, id="option-text-letter-then-its-text"),
    pytest.param("The answer is a square.", SHAPES, "B", True, id="option-text-after-marker"),
    pytest.param("It is a triangle.", SHAPES, "C", False, id="option-text-mentioned-wrong"),
    pytest.param("No", YESNO, "B", True, id="option-text-yes-no"),
    pytest.param("Yes, it is.", YESNO, "A", False, id="option-text-yes-no-wrong"),
    pytest.param("The answer is 6 cm.", LENGTH, "B", True, id="option-text-value-with-unit"),
    pytest.param("Answer: 6", LENGTH, "B", True, id="option-text-value-without-unit"),
    pytest.param("\\boxed{\\frac{1}{2}}", FRACS, "B", True, id="option-text-latex-value"),
    pytest.param("The answer is 2/3", FRACS, "C", False, id="option-text-wrong-fraction"),
    # the final stated choice vs the first letter seen
    pytest.param("(A) is incorrect because the angle is obtuse. The correct option is (C).", ANGLE, "C", True,
                 id="final-choice-correct-option-is"),
    pytest.param("A and B are too small, so the answer is (C).", ANGLE, "C", True, id="final-choice-answer-is"),
    pytest.param("Looking at (A) and (B)...\nFinal answer: (C)", ANGLE, "C", True, id="final-choice-final-answer"),
    pytest.param("Option A is 30. Answer: C", ANGLE, "C", True, id="final-choice-answer-colon"),
    pytest.param("(C) looks close but the correct answer is (D).", ANGLE, "D", False, id="final-choice-wrong-letter"),
    pytest.param("Comparing the options, \\boxed{C}", ANGLE, "C", True, id="final-choice-boxed-letter"),
    pytest.param("**Answer:** C", ANGLE, "C", True, id="final-choice-markdown"),
    pytest.param("The answer should be C.", ANGLE, "C", True, id="final-choice-should-be"),
    pytest.param("The angle is 60 degrees.", ANGLE, "C", True, id="final-choice-value-of-option"),
    pytest.param("I think (A) fits, or maybe (C).", ANGLE, "C", True, id="final-choice-last-letter-mentioned"),
    # answers after a line break
    pytest.param("The answer is:\nB", THREE, "B", True, id="line-break-letter"),
    pytest.param("Answer:\n\n(B) green", THREE, "B", True, id="line-break-letter-and-text"),
    pytest.param("The answer is:\n-5", NEG, "-5", True, id="line-break-number"),
    pytest.param("Final answer:\n\\frac{1}{2}", V_FRAC, "\\frac{1}{2}", True, id="line-break-latex"),
    # fractions and LaTeX
    pytest.param("The answer is 1/2", HALF, "0.5", True, id="latex-slash-fraction-float"),
    pytest.param("\\boxed{\\frac{1}{2}}", HALF, "0.5", True, id="latex-frac-float"),
    pytest.param("$\\frac{1}{3}$ is the answer, so \\boxed{\\frac{1}{3}}", HALF, "0.3", False, id="latex-wrong-fraction"),
    pytest.param("\\boxed{\\frac12}", V_FRAC, "\\frac{1}{2}", True, id="latex-frac-without-braces"),
    pytest.param("\\boxed{\\dfrac{1}{2}}", V_FRAC, "\\frac{1}{2}", True, id="latex-dfrac"),
    pytest.param("\\boxed{\\tfrac{1}{2}}", V_FRAC, "\\frac{1}{2}", True, id="latex-tfrac"),
    pytest.param("\\boxed{\\frac{1}{2}}", V_SLASH, "\\frac{1}{2}", True, id="latex-frac-vs-slash-gold"),
    pytest.param("\\boxed{0.5}", V_FRAC, "0.5", True, id="latex-decimal-vs-frac-gold"),
    pytest.param("\\boxed{\\frac{2}{3}}", V_FRAC, "\\frac{2}{3}", False, id="latex-frac-wrong"),
    pytest.param("\\boxed{\\sqrt{12}}", V_ROOT, "\\sqrt{12}", True, id="latex-sqrt-equivalent"),
    pytest.param("\\boxed{3\\sqrt{2}}", V_ROOT, "3\\sqrt{2}", False, id="latex-sqrt-wrong"),
    pytest.param("The answer is $\\sqrt{3}$", ROOT, "1.73", True, id="latex-sqrt-float"),
    pytest.param("\\boxed{\\frac{\\pi}{3}}", PI3, "1.05", True, id="latex-pi-float"),
    pytest.param("\\boxed{\\frac{\\pi}{3}}", V_PI, "\\frac{\\pi}{3}", True, id="latex-pi-text"),
    pytest.param("\\boxed{\\left(1+x^{2}\\right)}", V_EXPR, "(1+x^{2})", True, id="latex-math-verify-expression"),
    pytest.param("\\boxed{x^2-1}", V_EXPR, "x^2-1", False, id="latex-math-verify-wrong-expression"),
    pytest.param("\\boxed{25\\%}", PCT, "25", True, id="latex-percent"),
    pytest.param("The answer is 25%.", PCT, "25", True, id="latex-percent-sign"),
    pytest.param("\\boxed{60^\\circ}", DEG, "60", True, id="latex-degrees"),
    pytest.param("The angle is 60°.", DEG, "60", True, id="latex-degree-sign"),
    pytest.param("\\boxed{30^{\\circ}}", V_DEG, "30", True, id="latex-degrees-text-gold"),
    pytest.param("\\boxed{12\\text{ cm}}", V_CM, "12 cm", True, id="latex-units-text"),
    pytest.param("\\boxed{\\mathrm{blue}}", V_WORD, "blue", True, id="latex-mathrm-word"),
    pytest.param("\\boxed{red}", V_WORD, "red", False, id="latex-wrong-word"),
    # unicode minus and typographic characters
    pytest.param("The answer is \u22125", NEG, "-5", True, id="unicode-minus"),
    pytest.param("The answer is \u20135.", NEG, "-5", True, id="unicode-en-dash"),
    pytest.param("The answer is 5", NEG, "5", False, id="unicode-sign-dropped-wrong"),
    pytest.param("The answer is \uff17", V_INT, "7", True, id="unicode-full-width-digit"),
    pytest.param("There are 12\u202f000 people, so 12,000.", BIG, "12000", True, id="unicode-thousands"),
    pytest.param("\\boxed{[3,\u00a0\u22121]}", LIST, "[3.0, -1.0]", True, id="unicode-list-nbsp-minus"),
    pytest.param("[-1, 3]", LIST, "[-1.0, 3.0]", False, id="unicode-list-order-wrong"),
    # the last number, not the first
    pytest.param("There are 3 red cubes and 2 blue cubes, so 5 cubes in total.", FIVE, "5", True,
                 id="last-number-conclusion"),
    pytest.param("Step 1: 2 + 3 = 5", FIVE, "5", True, id="last-number-equation"),
    pytest.param("5 cubes minus 1 hidden leaves 4.", FIVE, "4", False, id="last-number-wrong"),
    pytest.param("Counting again I get 7 blocks.", V_INT, "7", True, id="last-number-text-gold"),
    pytest.param("The ratio is 1 to 2, that is 0.5", HALF, "0.5", True, id="last-number-float"),
    # refusals stay wrong
    pytest.param("I cannot determine the answer", FIVE, "I cannot determine the answer", False, id="refusal-integer"),
    pytest.param("I cannot determine the answer.", ANGLE, "I cannot determine the answer", False, id="refusal-choice"),
    pytest.param("I cannot determine the answer", V_FRAC, "I cannot determine the answer", False, id="refusal-text"),
    pytest.param("", HALF, "", False, id="refusal-empty"),
])
def test_judge_table(response, item, extracted, correct):
    verdict = judge(response, item)
    assert (verdict.extracted, verdict.correct) == (extracted, correct), verdict


def test_extraction_prefers_the_last_boxed_and_balances_braces():
    assert extract_answer("first \\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert extract_answer("The answer is 7. Also the answer is 8.") == "8"
    assert extract_answer("The answer is:\n\n  (C) 60\nbecause ...") == "(C) 60"


def test_verdict_names_the_rule_that_decided():
    assert judge("\\boxed{C}", ANGLE) == Verdict("C", True, "boxed")
    assert judge("The correct option is (C).", ANGLE) == Verdict("C", True, "final choice")
    assert judge("A square.", SHAPES).rule == "option text"
    assert judge("\\boxed{x^2-1}", V_EXPR).rule == "math-verify"
    assert judge("I cannot determine the answer", FIVE).rule == "no answer"


PATHOLOGICAL = ["\\boxed{" + "(" * 40 + "1" + ")" * 40 + "}",   # ~10 s in math-verify's parser (0.9.0)
                "\\boxed{9^{9^{9^{9}}}}",                          # never ends without a timeout
                "$" + "+".join(f"x^{{{i}}}" for i in range(3000)) + "$ " * 50]


@pytest.mark.parametrize("response", PATHOLOGICAL, ids=["nested-parens", "power-tower", "huge"])
def test_a_pathological_answer_is_bounded_off_the_main_thread(response):
    item = EvalItem("v-x", "Simplify", "x^2+1", "text")
    judge("\\boxed{x^2+1}", item)  # start the math-verify worker outside the timed part
    result = {}
    worker = threading.Thread(target=lambda: result.update(verdict=judge(response, item)))
    started = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and time.monotonic() - started < 30   # DEADLINE_S is 10 s
    assert result["verdict"].correct is False
    assert judge("\\boxed{1+x^2}", item) == Verdict("1+x^2", True, "math-verify")  # the worker recovered


def test_math_verify_from_many_threads_agrees_with_the_main_thread():
    items = [(f"\\boxed{{{r}}}", EvalItem(str(i), "q", g, "text"))
             for i, (r, g) in enumerate([("x^2+1", "1+x^2"), ("2x", "x+x"), ("x-1", "1-x"), ("(1,2)", "(1, 2)")])]
    expected = [judge(r, it) for r, it in items]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda pair: judge(*pair), items)) == expected
    assert [v.correct for v in expected] == [True, True, False, True]


def _png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mathvista_parquet_layout(tmp_path):
    rows = [{"pid": "1", "question": "How many?", "image": "images/1.jpg",
             "decoded_image": {"bytes": _png((255, 0, 0)), "path": "1.jpg"}, "choices": None, "unit": None,
             "precision": None, "answer": "3", "question_type": "free_form", "answer_type": "integer",
             "query": "Hint: answer with an integer.\nQuestion: How many?"},
            {"pid": "2", "question": "Which?", "image": "images/2.jpg",
             "decoded_image": {"bytes": _png((0, 0, 255)), "path": "2.jpg"}, "choices": ["yes", "no"], "unit": None,
             "precision": 2.0, "answer": "no", "question_type": "multi_choice", "answer_type": "text",
             "query": "Hint: choose.\nQuestion: Which?\nChoices:\n(A) yes\n(B) no"}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "testmini-00000-of-00001.parquet")
    items = load_eval_set(f"mathvista:{tmp_path}")
    assert [i.id for i in items] == ["1", "2"]
    assert items[0].answer_type == "integer" and items[0].question.startswith("Hint:")
    assert items[1].answer_type == "multi_choice" and items[1].choices == ("yes", "no")
    assert items[0].image().getpixel((0, 0)) == (255, 0, 0)
    assert judge("(B)", items[1]) == Verdict("B", True, "letter")


def test_mathvision_jsonl_layout(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "images" / "1.jpg")
    records = [{"id": "1", "question": "Which figure?", "options": ["A1", "B1", "C1", "D1", "E1"],
                "image": "images/1.jpg", "answer": "E", "solution": None, "level": 2, "subject": "logic"},
               {"id": "2", "question": "How long?", "options": [], "image": "images/1.jpg", "answer": "2.5",
                "solution": None, "level": 3, "subject": "metric geometry - length"}]
    (tmp_path / "data" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    items = load_eval_set(f"mathvision:{tmp_path / 'data' / 'test.jsonl'}")
    assert items[0].answer_type == "multi_choice" and "(E) E1" in items[0].question
    assert items[1].answer_type == "text" and items[1].image().size == (8, 8)
    assert judge("\\boxed{2.50}", items[1]) == Verdict("2.50", True, "numeric")


def test_project_jsonl_and_its_errors(tmp_path):
    good = {"id": "t1", "question": "2+2?", "answer": "4", "answer_type": "integer"}
    (tmp_path / "set.jsonl").write_text(json.dumps(good) + "\n")
    assert load_eval_set(tmp_path / "set.jsonl")[0].image() is None
    (tmp_path / "bad.jsonl").write_text(json.dumps(dict(good, answer_type="essay")) + "\n")
    with pytest.raises(MergescopeError, match="answer_type 'essay'"):
        load_eval_set(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(MergescopeError, match="line 1 is not JSON"):
        load_eval_set(tmp_path / "broken.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MergescopeError, match="empty"):
        load_eval_set(tmp_path / "empty.jsonl")
