"""`langchain_ilre.ILReRetriever` against langchain-tests' standard retriever suite.

It loads the embedded model (no network): run it from this folder with
``python -m pytest tests/integration_tests``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_ilre import ILReRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ilre_integrations._common import ContextCorpus, shared_engine

TOPICS = ("tides", "volcanoes", "glaciers", "deserts", "rainforests")


@pytest.fixture(scope="module")
def corpus() -> ContextCorpus:
    corpus = ContextCorpus(shared_engine())
    texts = [
        f"This note is about {topic}. "
        + " ".join(f"Fact {n}: {topic} shape the land in way number {n}." for n in range(1, 8))
        for topic in TOPICS
    ]
    corpus.add(texts, [{"topic": topic} for topic in TOPICS])
    return corpus


class TestILReRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _corpus(self, corpus: ContextCorpus) -> None:
        self.corpus = corpus

    @property
    def retriever_constructor(self) -> type[ILReRetriever]:
        return ILReRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "k": 2, "tokens_per_k": 32}

    @property
    def retriever_query_example(self) -> str:
        return "How do glaciers and volcanoes shape the land?"
