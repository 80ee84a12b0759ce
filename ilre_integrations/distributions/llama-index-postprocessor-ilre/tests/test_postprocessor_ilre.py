import traceback

import pytest
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.ilre import ILRePostprocessor, __all__


def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in ILRePostprocessor.__mro__]
    assert BaseNodePostprocessor.__name__ in names_of_base_classes


def test_the_class_lives_in_this_package() -> None:
    assert __all__ == ["ILRePostprocessor"]
    assert ILRePostprocessor.__module__ == "llama_index.postprocessor.ilre.base"
    assert ILRePostprocessor(budget_tokens=8).to_dict()["class_name"] == "ILRePostprocessor"


def test_a_traceback_names_this_package() -> None:
    postprocessor = ILRePostprocessor(budget_tokens=8, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text="Some text."), score=None)]
    with pytest.raises(ValueError) as caught:  # an empty query, refused before any model loads
        postprocessor.postprocess_nodes(nodes, QueryBundle(" "))
    files = [frame.filename for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert any(file.endswith("postprocessor/ilre/base.py") for file in files), files
