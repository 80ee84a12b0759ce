"""LlamaIndex node postprocessor of ILRe: `ILRePostprocessor` compresses retrieved nodes to
the spans the question attends to most (in-model token recall), within one token budget."""

from llama_index.postprocessor.ilre.base import ILRePostprocessor

__all__ = ["ILRePostprocessor"]
