"""The value of an answer written as arithmetic, kept exact where it can be, and comparisons of values.

Written here rather than with SymPy: an answer is model text, and SymPy's parser (`sympify`,
`parse_latex`) evaluates what it is given, takes seconds to import and has no bound on the work one
expression costs. This evaluator walks Python's `ast` over `+ - * / ^`, `\\frac`, `\\sqrt`, `\\pi`, `e`
and (for identity checks only) one-letter variables, with bounded exponents. Decimals and fractions stay
`fractions.Fraction` (exact), so `\\frac{1}{2^{98}}` and `\\frac{1}{2^{99}}` compare unequal however small
they are; a root or π makes the value a float, compared with a relative tolerance (never an absolute one).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction

from merging.evals.normalise import normalise

__all__ = ["Value", "identical", "last_number", "same", "to_number", "value_of"]

Value = Fraction | float
REL_TOL = 1e-6          # for values a root or π made inexact: six significant digits, at any scale
MAX_EXPONENT = 1024     # |n| in x^n; beyond it an answer is not plain arithmetic (9^{9^{9^9}})
MAX_BITS = 4096         # an exact value's numerator/denominator size bound, so x^n stays cheap
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
_UNIT = re.compile(r"(?<![a-zA-Z])\s*(?:(?!pi\b)[a-zA-Z]{1,6}(?:\^?\{?[23]\}?)?"
                   r"|units?|square units|cubic units|degrees?)\s*$")
_TOKEN = re.compile(r"\*\*|sqrt|pi|\d+(?:\.\d+)?(?:e[+-]?\d+)?|\.\d+|[A-Za-z]|[-+*/()]|\S")
_NUMBER = re.compile(r"[\d.][\d.e+-]*")
_KNOWN = re.compile(r"\*\*|sqrt|pi|[\d.][\d.e+-]*|[A-Za-z]|[-+*/()]")
_ENDS = re.compile(r"[\d.][\d.e+-]*|pi|[A-Za-z]|\)")     # tokens a value ends with
_STARTS = re.compile(r"[\d.][\d.e+-]*|pi|[A-Za-z]|\(|sqrt")  # tokens a value starts with
_PM = re.compile(r"\\pm|\\mp|±|∓|\+/?-")


def _power(base: Value, exponent: Value) -> Value:
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        n = int(exponent)
        if abs(n) > MAX_EXPONENT:
            raise ValueError("exponent too large")
        if isinstance(base, Fraction):
            if max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(n) > MAX_BITS:
                raise ValueError("exact power too large")
            return base ** n
    elif abs(float(exponent)) > MAX_EXPONENT:
        raise ValueError("exponent too large")
    result = float(base) ** float(exponent)
    if isinstance(result, complex):
        raise ValueError("complex power")
    return result


def _sqrt(x: Value) -> Value:
    if isinstance(x, Fraction) and x >= 0:
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)
    return math.sqrt(x)


def _eval(node: ast.AST, names: dict[str, float]) -> Value:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))  # str: the decimal as written (0.1 is 1/10, not the nearest double)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand, names))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" \
            and len(node.args) == 1 and not node.keywords:
        return _sqrt(_eval(node.args[0], names))
    raise ValueError("not arithmetic")


def _python(text: str, units: bool = True) -> tuple[str, set[str]] | None:
    """The answer as a Python expression and the one-letter variables in it (a trailing unit dropped
    when `units`); None when it is not arithmetic."""
    s = normalise(text)
    if not s or len(s) > 200 or _PM.search(s):
        return None
    if units and re.search(r"\d\s*[a-zA-Z]", s) and not re.search(r"\\[a-z]", s):
        s = _UNIT.sub("", s)
    for _ in range(3):  # innermost braces first: exponents, roots, then fractions around them
        s = re.sub(r"\^\s*\{([^{}]*)\}", r"^(\1)", s)
        s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", s)
    s = re.sub(r"\\sqrt\s*(\d+)", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    out: list[str] = []
    for token in _TOKEN.findall(s.replace("{", "(").replace("}", ")")):
        if not _KNOWN.fullmatch(token):
            return None
        if out and _ENDS.fullmatch(out[-1]) and _STARTS.fullmatch(token) \
                and not (_NUMBER.fullmatch(out[-1]) and _NUMBER.fullmatch(token)):
            out.append("*")  # implicit product: 2\sqrt{3}, 2\pi, 3x, (a+1)(a-1); never "12 000"
        out.append(token)
    if not any(_NUMBER.fullmatch(t) or t == "pi" or t.isalpha() and len(t) == 1 for t in out):
        return None
    return " ".join(out), {t for t in out if len(t) == 1 and t.isalpha() and t != "e"}


def value_of(text: str, variables: dict[str, float] | None = None, units: bool = True) -> Value | None:
    """The value of a whole answer written as arithmetic — `-5`, `1,000`, `0.5`, `1/2`, `\\frac{1}{2}`,
    `2\\sqrt{3}`, `\\frac{\\pi}{2}`, `2^{10}`, `3 cm`, `25%` (as 25) — exact (`Fraction`) unless a root of a
    non-square or π is in it (then a float); None when it is not one (words, intervals, `±`, letters
    other than those bound in `variables`; a trailing unit such as "cm" only with `units=False`).
    Never raises."""
    parsed = _python(text, units)
    if parsed is None or parsed[1] - set(variables or {}):
        return None
    names = {"pi": math.pi, "e": math.e, **(variables or {})}
    try:
        value = _eval(ast.parse(parsed[0], mode="eval").body, names)
        finite = math.isfinite(float(value))  # beyond a double's range: not an answer anyone wrote
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, TypeError, MemoryError):
        return None
    return value if finite else None


def to_number(text: str) -> float | None:
    """`value_of(text)` as a float (None when it is not arithmetic). Never raises."""
    value = value_of(text)
    return None if value is None else float(value)


def same(a: Value, b: Value) -> bool:
    """Equal values: exactly when both are exact, else within `REL_TOL` of `b` relatively (0 only equals 0)."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=0.0)
    except OverflowError:
        return False


_LAST_NUMBER = re.compile(
    r"(?:(?:\\pm|\\mp|±|∓)\s*)?(?:-?\s*\\frac\s*\{[^{}]*\}\s*\{[^{}]*\}|-?\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?(?![\d.])"
    r"|-?\d*\\sqrt\s*\{[^{}]*\}|-?(?:\d+(?:\.\d+)?|\.\d+))")


def last_number(text: str) -> tuple[str, Value | None] | None:
    """The last number (or fraction/root) in free text — a response concludes with its answer — as
    (its text, its value); the value is None when it carries a ± (two answers, never one of them).
    None when the text has no number."""
    for match in reversed(list(_LAST_NUMBER.finditer(normalise(text)))):
        shown = match.group(0).replace(" ", "")
        if _PM.match(shown):
            return shown, None
        value = value_of(match.group(0))
        if value is not None:
            return shown, value
    return None


_POINTS = (0.6180339887, 1.4142135623, 2.7182818284)  # irrational-looking: no accidental coincidence


def identical(gold: str, answer: str) -> bool | None:
    """Whether two expressions in the same one-letter variables agree as functions, tested at three
    positive points (equal polynomials/rational functions agree everywhere; unequal ones at three
    generic points only by accident); None when either is not such an expression or their variables
    differ. Guards math-verify's reported refusals such as `\\frac{1}{\\sqrt{n}}` for `\\sqrt{1/n}`."""
    parsed_gold, parsed_answer = _python(gold, units=False), _python(answer, units=False)
    if parsed_gold is None or parsed_answer is None or not parsed_gold[1] or parsed_gold[1] != parsed_answer[1]:
        return None
    names = sorted(parsed_gold[1])
    for k, point in enumerate(_POINTS):
        binding = {n: point + 0.37 * (i + k) for i, n in enumerate(names)}
        a, b = value_of(gold, binding, units=False), value_of(answer, binding, units=False)
        if a is None or b is None:
            return None
        if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True
