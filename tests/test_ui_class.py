"""The class view in a real browser on the shipped toy pair: what a projector (1024×768) and a small
laptop (800×600) show after a lesson and after Compare, the whole-answer divergence of a collapsed
merge, and the live skill scores against an independent computation through the library."""

import re

import pytest

from merging.evals.scoring import judge
from merging.experiments.skills import SKILL_ALPHAS, skill_items, skill_scores
from merging.experiments.sweep import wilson_interval
from merging.plan import curves
from merging.plan.merge_plan import MergePlan
from merging.run.generate import answer_batch
from ui import skills_panel
from ui.panel import Panel, attention_roles, plan_of

from tests.conftest import NEEDS_CHROMIUM, fill_number, new_page, wait_status

pytestmark = NEEDS_CHROMIUM
ON_SCREEN = ("compare", "answer-base", "answer-merged")
PER_SKILL = 5


def outside_viewport(page, ids) -> list[str]:
    """The elements of `ids` not wholly inside the viewport now."""
    return page.evaluate("""ids => ids.filter(id => { const r = document.getElementById(id).getBoundingClientRect();
        return !(r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0
                 && r.right <= window.innerWidth); })""", list(ids))


def show_answers(page, width: int) -> None:
    """At 1024 px the class view needs no scrolling; at 800 px one scroll brings the answers up."""
    if width < 1024:
        page.locator("#answers").evaluate("e => e.scrollIntoView({block: 'end'})")


@pytest.mark.parametrize("width,height", [(1024, 768), (800, 600)])
def test_after_a_lesson_and_compare_the_answers_are_on_one_screen(server, browser, width, height):
    page = new_page(browser, width, height)
    try:
        page.goto(server[0], wait_until="domcontentloaded")
        page.wait_for_selector("#curve svg", timeout=60_000)
        page.locator("#lessons input").click()
        page.get_by_role("option", name="Shared seed vs no seed").click()
        wait_status(page, "#gold", "red")  # the lesson's question is in: its gold answer shows
        show_answers(page, width)
        assert outside_viewport(page, ON_SCREEN) == []
        if width == 1024:  # the projector: the lesson and the gold answer on the same screen
            assert outside_viewport(page, ("lesson-text", "gold")) == []
        page.locator("#compare").click()
        wait_status(page, "#divergence", "Whole answer")  # the last step of Compare's chain
        show_answers(page, width)
        assert outside_viewport(page, ON_SCREEN) == []
        base, merged = page.locator("#answer-base"), page.locator("#answer-merged")
        assert abs(base.bounding_box()["y"] - merged.bounding_box()["y"]) < 2  # side by side, at 800 px too
        assert base.locator("textarea").input_value() == "red"
        assert merged.locator("textarea").input_value().startswith("redredred")
    finally:
        page.close()


def test_a_collapsed_answer_shows_a_large_whole_answer_divergence(page):
    page.locator("#lessons input").click()
    page.get_by_role("option", name="Shared seed vs no seed").click()  # every tensor, α 0.4, no shared seed
    wait_status(page, "#gold", "red")
    page.locator("#compare").click()
    text = wait_status(page, "#divergence", "Whole answer")
    first_token = float(re.search(r"KL\(base ‖ merged\) = ([\d.]+) nats", wait_status(page, "#kl", "nats"))[1])
    whole = float(re.search(r"mean KL\(base ‖ merged\) = ([\d.]+) nats/token", text)[1])
    # the first token is still "red" (barely moved), the whole answer "redredredbottom…" is far away
    assert first_token < 0.2 and whole > 1.0 and whole > 10 * first_token
    assert "far from the base VLM" in text and "parts from the base VLM at token 1" in text
    page.wait_for_selector("#divergence-plot .main-svg")


def default_plan(explorer) -> MergePlan:
    """The plan the page starts on: self-attention, a log ramp 0.05 → 0.4."""
    alphas = curves.layer_alphas({"preset": "loglinear", "start": 0.05, "end": 0.4}, explorer.num_layers)
    return plan_of(Panel(attention_roles(explorer), alphas, "linear"))


def open_skills(page, per_skill: int) -> None:
    """Open the skill scores and set the items per skill."""
    page.locator("#skills").get_by_text("Skill scores").first.click()
    fill_number(page, "#skill-items", per_skill)


def test_skill_scores_equal_an_independent_computation(page, server):
    explorer = server[1]
    open_skills(page, PER_SKILL)
    page.locator("#score-skills").click()
    status = wait_status(page, "#skills-status", "Skills of the current plan", timeout=600_000)
    shown = {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in
             re.finditer(r"([a-z_]+) (\d+) % \((\d+)–(\d+)\)", status)}
    items = skill_items(explorer.eval_items, PER_SKILL)
    # independently: the merged weights through the model worker, uncached, each answer judged here
    answers = explorer.answerer.run(lambda engine: answer_batch(engine.pair, [(i.question, i.image()) for i in items],
                                                                explorer.answer_settings), plan=default_plan(explorer))
    expected = {}
    for kind in {i.category for i in items}:
        marks = [judge(a, i).correct for a, i in zip(answers, items) if i.category == kind]
        low, high = wilson_interval(sum(marks), len(marks))
        expected[kind] = (round(100 * sum(marks) / len(marks)), round(100 * low), round(100 * high))
    assert shown == expected and len(shown) == 8  # the toy's eight kinds
    page.wait_for_selector("#skills-plot .main-svg")


def test_the_skill_scan_stops_when_asked(page, server):
    explorer = server[1]
    items = skill_items(explorer.eval_items, PER_SKILL)
    skill_scores(explorer.answerer, MergePlan(), items, explorer.answer_settings)  # α 0 (the base VLM) from the cache
    open_skills(page, PER_SKILL)
    # Stop must land before the scan ends, whatever the machine's speed: with the engine's lock held here,
    # α 0 goes through from the cache and α 0.2's first batch cannot run until Stop is in
    with explorer.engine.lock:
        page.locator("#skill-scan").click()
        wait_status(page, "#skills-status", f"({len(items)} items each)")  # the items box reached the server
        wait_status(page, "#skills-status", f"1/{len(SKILL_ALPHAS)} points")
        assert skills_panel.STOPS
        page.locator("#stop-skills").click()
        wait_status(page, "#skills-status", "Stopping after the current batch")
    status = wait_status(page, "#skills-status", "stopped at", timeout=600_000)
    assert f"stopped at 2/{len(SKILL_ALPHAS)} points" in status  # α 0.2's one batch ended, nothing after it
    page.wait_for_selector("#skills-scan-plot .main-svg")


def test_a_stroke_compares_on_release_and_scores_skills_after(page, server):
    explorer = server[1]
    question = "How many times does fox appear in: fox fish fox? Add 2."
    page.locator("#question textarea").fill(question)
    page.locator("#text-only input").check()
    open_skills(page, PER_SKILL)
    page.locator("#skills-after-compare input").check()
    page.locator("#compare-on-release input").check()
    box = page.locator("#curve svg").bounding_box()  # one stroke at α 0.8 across every layer, no click on Compare
    page.mouse.move(box["x"] + 3, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] * 0.2, steps=8)
    page.mouse.up()
    wait_status(page, "#skills-status", "Skills of the current plan", timeout=600_000)  # after Compare's chain
    assert page.locator("#answer-merged textarea").input_value()
    merged = [e for e in explorer.answerer.cache.entries()
              if e["config"].get("question") == question and e["config"]["plan"].get("rules")]
    assert merged and merged[0]["config"]["plan"]["rules"][0]["curve"]["values"] == [0.8] * explorer.num_layers
