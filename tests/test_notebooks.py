"""Notebooks as a reader runs them: what the "Run All" step of test.sh cannot see by itself.

- Every notebook with a `#| cuda` or `#| slow` cell calls `notebook_setup()` in a cell above the first one, so
  that JupyterLab's "Run All" skips the cell instead of failing on a laptop (cuda) or running for an hour at full
  size (slow). The Run All step catches a missing one before a cuda cell, not before a slow one: at test size
  a slow cell passes.
- The test-size thread setting lives in `notebook_setup()` alone, not copied into each notebook.
"""
import json
from pathlib import Path

import pytest

from chatgpt_course.core import cell_flags

NBS = sorted((Path(__file__).parent.parent / "nbs").glob("*.ipynb"))

def code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]

@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_flagged_cells_come_after_notebook_setup(path):
    cells = code_cells(path)
    flagged = [i for i, src in enumerate(cells) if cell_flags(src) & {"cuda", "slow"}]
    if not flagged: return
    setup = [i for i, src in enumerate(cells) if "notebook_setup()" in src and not cell_flags(src) & {"export"}]
    assert setup and setup[0] < flagged[0], (
        f"{path.name}: code cell {flagged[0]} is flagged {sorted(cell_flags(cells[flagged[0]]) & {'cuda', 'slow'})} "
        "but no cell above it calls notebook_setup(); add a hidden cell before the imports:\n"
        "#| hide\nfrom chatgpt_course.core import notebook_setup\nnotebook_setup()")

@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_thread_setting_only_in_notebook_setup(path):
    copies = [i for i, src in enumerate(code_cells(path)) if "set_num_threads(run_size(" in src]
    assert not copies, f"{path.name}: code cells {copies} set the test-size thread count; notebook_setup() does that"
