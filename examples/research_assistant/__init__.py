"""The research-assistant example: ``python -m examples.research_assistant.run`` from the repository root.

The pipeline itself lives in the installed package, :mod:`dspex.examples.research_assistant`, so that
``dspex demo`` can run it too; this directory holds the runnable script and its README.
"""
