"""The LangChain cookbook runs offline top to bottom, shows what it says it shows, and its
committed outputs are those of a fresh run (``python cookbook/regenerate.py`` rewrites them).

The notebook asserts its own key facts; this test also reads the executed outputs of the cells
tagged ``setup``, ``tokens``, ``highlight`` (HTML), ``answer``, ``retriever`` and ``plot`` (a PNG).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.cookbooks import regenerate

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "langchain_ilre.ipynb"


def test_langchain_cookbook_runs_and_shows_the_compression():
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    notebook = regenerate.execute(NOTEBOOK)

    # What the reader sees is what the engine gives today, but for timings.
    diff = regenerate.differences(NOTEBOOK, notebook)
    assert not diff, "\n".join(["outputs differ: run python cookbook/regenerate.py", *diff])

    tagged = {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}
    outputs = {
        tag: "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
        for tag, cell in tagged.items()
    }
    html = "".join(out.get("data", {}).get("text/html", "") for out in tagged["highlight"].outputs)

    value = re.search(
        r"Hidden in part 1: 'The special magic number for \w+ is (\d+)\.'", outputs["setup"]
    ).group(1)

    before, after, budget = map(
        int,
        re.search(
            r"(\d+) tokens retrieved -> (\d+) tokens after ILRe \(budget (\d+)\)", outputs["tokens"]
        ).groups(),
    )
    assert after <= budget < before

    # The needle's value is inside a kept span of its chunk.
    kept = re.findall(r"<mark>([^<]*)</mark>", html)
    assert any(value in span for span in kept)

    assert re.search(rf"^Answer: .*{value}", outputs["answer"], flags=re.MULTILINE)
    assert re.search(rf"^part 1: .*{value}", outputs["retriever"], flags=re.MULTILINE)

    # The plot of the scores along the documents, with the budget cut, is drawn inline.
    before, after, budget = map(
        int,
        re.search(
            r"(\d+) tokens in the documents -> (\d+) tokens kept \(budget (\d+),", outputs["plot"]
        ).groups(),
    )
    assert after <= budget < before
    assert any("image/png" in out.get("data", {}) for out in tagged["plot"].outputs)


def _png(pixels) -> str:
    import base64
    import io

    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, pixels, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_compare_by_their_pixels_within_antialiasing():
    """A plot redrawn a few edge pixels one level apart is the same image; a moved mark, a
    recoloured band or another size is not."""
    import numpy as np

    plot = np.ones((60, 200, 3), dtype=np.float32)
    plot[20:40, 50:90] = (1.0, 0.6, 0.2)  # a kept span
    same = regenerate.same_pixels
    assert same(_png(plot), _png(plot))
    rounded = plot.copy()
    rounded[[21, 30, 39], [50, 70, 89]] -= 1 / 255  # antialiasing of one redraw
    assert same(_png(plot), _png(rounded))
    moved = np.ones_like(plot)
    moved[20:40, 60:100] = (1.0, 0.6, 0.2)
    assert not same(_png(plot), _png(moved))
    recoloured = plot.copy()
    recoloured[20:40, 50:90] = (0.2, 0.6, 1.0)
    assert not same(_png(plot), _png(recoloured))
    assert not same(_png(plot), _png(plot[:, :199]))
