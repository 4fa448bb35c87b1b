"""De-duplication (chatgpt_course.dedup): what notebook cells cannot do well.

- Property test (hypothesis): exact de-duplication leaves no two equal keys and finds planted copies (changed in
  case and spacing), pointing at the first copy.
- The module stands alone: importing `chatgpt_course.dedup` in a fresh process does not import
  `chatgpt_course.data` (data imports dedup for `clean_corpus`, never the other way round).
"""
import subprocess, sys

from hypothesis import given, settings, strategies as st, HealthCheck

from chatgpt_course.dedup import dedupe_key, exact_duplicates

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(docs=st.lists(st.text(min_size=1, max_size=40), max_size=30), data=st.data())
def test_exact_dedupe(docs, data):
    dups = exact_duplicates(docs)
    kept = [d for i, d in enumerate(docs) if i not in {x.index for x in dups}]
    assert len({dedupe_key(d) for d in kept}) == len(kept) == len({dedupe_key(d) for d in docs})
    if docs:  # a planted copy (changed in case and spacing) is found, and points at the first copy
        i = data.draw(st.integers(0, len(docs) - 1))
        copy = "  " + docs[i].upper() + " \n"
        if dedupe_key(copy) == dedupe_key(docs[i]):  # true unless upper() and casefold() disagree (e.g. dotless i)
            found = exact_duplicates(docs + [copy])
            assert found[-1].index == len(docs) and dedupe_key(docs[found[-1].of]) == dedupe_key(docs[i])


def test_dedup_does_not_import_data():
    code = "import sys, chatgpt_course.dedup; print('chatgpt_course.data' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
