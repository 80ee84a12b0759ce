from llama_index.core.retrievers import BaseRetriever
from llama_index.retrievers.ilre import ILReRetriever, __all__

import ilre_integrations.llama_index as face


def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in ILReRetriever.__mro__]
    assert BaseRetriever.__name__ in names_of_base_classes


def test_re_export() -> None:
    assert __all__ == ["ILReRetriever"]
    assert ILReRetriever is face.ILReRetriever
