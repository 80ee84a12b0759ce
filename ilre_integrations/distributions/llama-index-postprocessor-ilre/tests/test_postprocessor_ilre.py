from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.postprocessor.ilre import ILRePostprocessor, __all__

import ilre_integrations.llama_index as face


def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in ILRePostprocessor.__mro__]
    assert BaseNodePostprocessor.__name__ in names_of_base_classes


def test_re_export() -> None:
    assert __all__ == ["ILRePostprocessor"]
    assert ILRePostprocessor is face.ILRePostprocessor
