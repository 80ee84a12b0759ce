import traceback

import langchain_ilre
import pytest
from langchain_core.load import dumpd
from langchain_ilre import __all__

EXPECTED_ALL = ["ILReCompressor", "ILReRetriever"]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)


def test_the_classes_live_in_this_package() -> None:
    for name in EXPECTED_ALL:
        assert getattr(langchain_ilre, name).__module__.startswith("langchain_ilre.")


def test_a_serialised_compressor_names_this_package() -> None:
    compressor = langchain_ilre.ILReCompressor(budget_tokens=8)
    assert dumpd(compressor)["id"] == ["langchain_ilre", "document_compressors", "ILReCompressor"]


def test_a_traceback_names_this_package() -> None:
    compressor = langchain_ilre.ILReCompressor(budget_tokens=8)
    with pytest.raises(ValueError) as caught:  # an empty query, refused before any model loads
        compressor.compress_documents([], " ")
    files = [frame.filename for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert any("langchain_ilre" in file for file in files), files
