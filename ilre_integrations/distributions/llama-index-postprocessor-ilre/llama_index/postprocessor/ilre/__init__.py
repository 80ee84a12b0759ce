"""LlamaHub package for ILRe: re-exports `ilre_integrations.llama_index.ILRePostprocessor`.

No logic here: ``from llama_index.postprocessor.ilre import ILRePostprocessor`` gives
the very class.
"""

from ilre_integrations.llama_index import ILRePostprocessor

__all__ = ["ILRePostprocessor"]
