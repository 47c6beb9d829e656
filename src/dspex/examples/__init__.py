"""Worked examples that ship with dspex, so ``dspex demo`` can run them from an installed package.

- :mod:`dspex.examples.research_assistant`: a research pipeline (query parsing, ChainOfThought
  refinement, BM25 and keyword retrieval in parallel, rank fusion, drafts compared by
  MultiChainComparison, an answer with citations). ``examples/research_assistant/`` runs it.
"""
