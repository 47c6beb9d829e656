"""Reasoning patterns DSPy lacks, as real ``dspy.Module`` subclasses in the catalog: consensus,
self-correcting chain of thought and tree of thoughts."""

from dspex.modules.patterns.consensus import Consensus, ConsensusMethod
from dspex.modules.patterns.self_correcting import SelfCorrectingCoT, Verdict
from dspex.modules.patterns.tree_of_thoughts import TreeOfThoughts

__all__ = ["Consensus", "ConsensusMethod", "SelfCorrectingCoT", "TreeOfThoughts", "Verdict"]
