"""LlamaIndex retriever of ILRe: `ILReRetriever` reads whole documents once and recalls
budgeted spans of them for every query (in-model token recall), without an embedding index."""

from llama_index.retrievers.ilre.base import ILReRetriever

__all__ = ["ILReRetriever"]
