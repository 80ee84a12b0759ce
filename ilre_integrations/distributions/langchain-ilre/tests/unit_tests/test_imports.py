import langchain_ilre
from langchain_ilre import __all__

import ilre_integrations.langchain as face

EXPECTED_ALL = ["ILReCompressor", "ILReRetriever"]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)


def test_re_exports_are_the_integration_classes() -> None:
    for name in EXPECTED_ALL:
        assert getattr(langchain_ilre, name) is getattr(face, name)
