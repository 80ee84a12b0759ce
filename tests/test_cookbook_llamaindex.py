"""The LlamaIndex cookbook runs offline from top to bottom, shows what it claims, and its
committed outputs are those of a fresh run (``python cookbook/regenerate.py`` rewrites them).

Its cells assert the key facts themselves (a failing cell fails the run); this test reads the
executed outputs back, so a notebook that stopped printing or highlighting them fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.cookbooks import regenerate

NOTEBOOK = Path(__file__).parents[1] / "cookbook" / "llamaindex_ilre.ipynb"


def test_cookbook_runs_offline_and_shows_its_results():
    # Raises CellExecutionError, with the cell's traceback, if a cell fails.
    notebook = regenerate.execute(NOTEBOOK)

    # What the reader sees is what the engine gives today, but for timings.
    diff = regenerate.differences(NOTEBOOK, notebook)
    assert not diff, "\n".join(["outputs differ: run python cookbook/regenerate.py", *diff])

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    html = "".join(o.data["text/html"] for o in outputs if "text/html" in o.get("data", {}))

    value = re.search(r"Hidden in part 1: .*magic number for \w+ is (\d+)", printed).group(1)
    answers = re.findall(r"^Answer: '(.*)'$", printed, flags=re.MULTILINE)
    assert len(answers) == 2 and all(value in answer for answer in answers)
    before, after, budget = map(
        int,
        re.search(
            r"(\d+) tokens retrieved -> (\d+) tokens after ILRe \(budget (\d+)\)", printed
        ).groups(),
    )
    assert after <= budget < before
    # Both pipelines show the needle inside a kept (highlighted) span.
    assert len(re.findall(rf"<mark>[^<]*{value}[^<]*</mark>", html)) == 2
    assert "reloaded 3 documents; same spans recalled" in printed
    # The plot of the scores along the documents, with the budget cut, is drawn inline.
    before, after, budget = map(
        int,
        re.search(
            r"(\d+) tokens in the documents -> (\d+) tokens kept \(budget (\d+),", printed
        ).groups(),
    )
    assert after <= budget < before
    plots = [cell for cell in notebook.cells if "plot" in cell.metadata.get("tags", [])]
    assert len(plots) == 1
    assert any("image/png" in out.get("data", {}) for out in plots[0].outputs)
    # The hosted-LLM example is documentation only: no code cell reaches for a network.
    assert not any(
        "openai" in cell.source.lower() for cell in notebook.cells if cell.cell_type == "code"
    )
