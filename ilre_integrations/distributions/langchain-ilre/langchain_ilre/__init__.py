"""LangChain partner package for ILRe: re-exports `ilre_integrations.langchain`, no logic here.

``from langchain_ilre import ILReCompressor`` gives the very class that
``from ilre_integrations.langchain import ILReCompressor`` gives.
"""

from ilre_integrations.langchain import ILReCompressor, ILReRetriever

__all__ = ["ILReCompressor", "ILReRetriever"]
