"""01d's `safety_eval_set` from outside, whatever the seed (property tests, hypothesis; no model, seconds):

- it holds both behaviours, n items each: `unsafe` (held-out unsafe requests, over the four unsafe categories,
  expect a refusal) and `lookalike` (held-out look-alikes, expect an answer);
- it uses only held-out templates: each item's template is on the held-out side of the split, no training chat
  row uses it, and no training row has its text; `split="train"` shares no template with it;
- its items have `make_eval_set`'s shape and the fine-tuning rows' system prompts, and 01c's `refusal` judge marks
  each reference reply right and the opposite reply wrong;
- `is_refusal` is one function, importable from `chat_data` (where the judges live) and from `safety_data`.
"""
import pytest
from hypothesis import given, settings, strategies as st

from chatgpt_course import chat_data, safety_data
from chatgpt_course.chat_data import make_eval_set, score_reply, system_prompt, validate_chat
from chatgpt_course.core import CourseError
from chatgpt_course.safety_data import (REFUSALS, SAFETY_EVAL_BEHAVIOURS, UNSAFE, is_heldout_template, safety_chat_rows,
                                        safety_eval_set)

TRAIN = safety_chat_rows(2000, seed=0)  # the fine-tuning rows of the training split
TRAIN_TEMPLATES = {r["tags"]["template"] for r in TRAIN}
TRAIN_TEXTS = {r["messages"][1]["content"] for r in TRAIN}

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 40), augment=st.booleans())
def test_only_heldout_templates_and_both_behaviours(seed, n, augment):
    items = safety_eval_set(n, seed=seed, augment=augment)
    assert items == safety_eval_set(n, seed=seed, augment=augment)  # seeded
    by = {b: [it for it in items if it["behaviour"] == b] for b in SAFETY_EVAL_BEHAVIOURS}
    assert set(by) == {"unsafe", "lookalike"} and all(len(v) == n for v in by.values())
    assert {it["category"] for it in by["unsafe"]} == set(UNSAFE) and {it["category"] for it in by["lookalike"]} == {"lookalike"}
    assert all(is_heldout_template(it["template"]) for it in items)
    assert not {it["template"] for it in items} & TRAIN_TEMPLATES
    assert not {it["messages"][1]["content"] for it in items} & TRAIN_TEXTS
    assert not {it["template"] for it in safety_eval_set(n, split="train", seed=seed)} & {it["template"] for it in items}

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_items_are_eval_items_judged_by_refusal(seed):
    shape = set(make_eval_set(1)[0]) - {"context", "heldout_phrasing"}  # the keys every make_eval_set item has
    for it in safety_eval_set(20, seed=seed):
        assert shape <= set(it) and it["judge"] == "refusal" and it["expect"] is (it["behaviour"] == "unsafe")
        assert [m["role"] for m in it["messages"]] == ["system", "user"] and it["messages"][0]["content"] == system_prompt(it["style"])
        validate_chat({"messages": it["messages"] + [{"role": "assistant", "content": it["reference"]}]})
        assert score_reply(it, it["reference"])["correct"], it
        opposite = "Sure! Here it is." if it["expect"] else REFUSALS["dangerous"][1]
        assert not score_reply(it, opposite)["correct"], it

def test_bad_arguments_are_refused():
    with pytest.raises(CourseError, match="split='test'"): safety_eval_set(4, split="test")
    with pytest.raises(CourseError, match="n=-1"): safety_eval_set(-1)
    assert safety_eval_set(0) == []

def test_is_refusal_lives_with_the_judges_and_is_still_exposed_by_01d():
    assert safety_data.is_refusal is chat_data.is_refusal and "is_refusal" in safety_data.__all__
