import traceback

import pytest
from llama_index.core.retrievers import BaseRetriever
from llama_index.retrievers.ilre import ILReRetriever, __all__


def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in ILReRetriever.__mro__]
    assert BaseRetriever.__name__ in names_of_base_classes


def test_the_class_lives_in_this_package() -> None:
    assert __all__ == ["ILReRetriever"]
    assert ILReRetriever.__module__ == "llama_index.retrievers.ilre.base"


def test_a_traceback_names_this_package() -> None:
    with pytest.raises(ValueError) as caught:  # two budgets, refused before any model loads
        ILReRetriever(budget_tokens=8, ratio=0.5)
    files = [frame.filename for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert any(file.endswith("retrievers/ilre/base.py") for file in files), files
