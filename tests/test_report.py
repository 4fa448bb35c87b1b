"""`chatgpt-course report` end to end on tiny runs made through the command line: the page has the sections its runs
support and every PNG it links exists; a folder that is not a run, and a report folder inside data/ or equal to a run,
are refused in one line with nothing written; two chat runs give the side-by-side table, with no winner named
without p < 0.05."""
import re, shutil

import pytest

from _cli import in_process, tiny_chat_model
from chatgpt_course.core import data_path


@pytest.fixture(scope="module")
def chat_runs(tmp_path_factory):
    "A tiny base (d/base), a chat model tuned from it (d/sft), and a copy of that run in another folder (d/copy/sft)."
    d = tmp_path_factory.mktemp("report")
    tiny_chat_model(d)
    shutil.copytree(d / "sft", d / "copy" / "sft")
    return d

def links(page: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)

def test_report_of_a_base_and_a_chat_run(chat_runs, tmp_path, capsys):
    d, out = chat_runs, tmp_path / "report"
    r = in_process(capsys, "report", d / "base", d / "sft", "--out", out, "--n", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    page = (out / "report.md").read_text()
    for section in ("## Tokenizer", "## Pretraining", "## Fine-tuning: held-out tasks"): assert section in page
    for absent in ("## Preference tuning", "## Reinforcement", "## Safety", "## Serving", "## Side by side"): assert absent not in page
    assert links(page) and all((out / f).is_file() for f in links(page)), links(page)
    assert (out / "sft-tasks.json").is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]

def test_two_chat_runs_side_by_side(chat_runs, tmp_path, capsys):
    d, out = chat_runs, tmp_path / "report"
    r = in_process(capsys, "report", d / "sft", d / "copy" / "sft", "--out", out, "--n", "1", "--tasks", "add_sub,unsafe,lookalike", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    page = (out / "report.md").read_text()
    side = page[page.index("## Side by side"):]
    assert f"### {d.name}-sft (A) against copy-sft (B)" in side, side[:300]
    rows = [line for line in side.splitlines() if line.startswith(("| add_sub |", "| unsafe |", "| lookalike |"))]
    assert len(rows) == 3 and all("not told apart" in row and "| 1 |" in row for row in rows), rows  # the same weights: p = 1

@pytest.mark.parametrize("case", ["not a run", "inside data/", "a run directory"])
def test_bad_input_is_refused_in_one_line(chat_runs, tmp_path, capsys, case):
    d = chat_runs
    args, out, says = {"not a run": ((d / "base", d / "copy"), tmp_path / "report", "copy' is not a run directory (no run.json)"),
                       "inside data/": ((d / "sft",), data_path() / "report-test", "inside the bundled data folder"),
                       "a run directory": ((d / "base", d / "sft"), d / "sft", "is the run directory of 'sft'")}[case]
    before = sorted(p.name for p in (d / "sft").iterdir())
    r = in_process(capsys, "report", *args, "--out", out, "--n", "1", "--device", "cpu")
    assert r.returncode == 2
    msg = r.stderr.strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith("chatgpt-course report: error:") and says in msg[0], r.stderr
    assert sorted(p.name for p in (d / "sft").iterdir()) == before
    if case != "a run directory": assert not out.exists()
