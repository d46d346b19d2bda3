"""Answer extraction and scoring on real-format examples, and the eval-set loaders' file layouts."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from merging.errors import MergescopeError
from merging.evaluate import EvalItem, extract_answer, load_eval_set, score

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
def test_scoring_table(response, item, extracted, correct):
    assert score(response, item) == (extracted, correct)


def test_extraction_prefers_the_last_boxed_and_balances_braces():
    assert extract_answer("first \\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert extract_answer("The answer is 7. Also the answer is 8.") == "8"


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
    assert score("(B)", items[1]) == ("B", True)


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
    assert score("\\boxed{2.50}", items[1]) == ("2.50", True)


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
