"""LLM text generation for LLM-assisted retrieval: an OpenAI-compatible server client and a local transformers
model, both behind one cached ``Generator`` interface."""

from retrieval_lab.generation.base import GenerationCache, GenerationError, Generator

__all__ = ["GenerationCache", "GenerationError", "Generator"]
