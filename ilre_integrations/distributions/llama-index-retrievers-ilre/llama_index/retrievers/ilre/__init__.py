"""LlamaHub package for ILRe: re-exports `ilre_integrations.llama_index.ILReRetriever`.

No logic here: ``from llama_index.retrievers.ilre import ILReRetriever`` gives
the very class.
"""

from ilre_integrations.llama_index import ILReRetriever

__all__ = ["ILReRetriever"]
