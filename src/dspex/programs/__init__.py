"""The program registry: programs by name, their versions as JSON, and a lifecycle to promote them.

::

    from dspex.programs import ProgramRegistry

    registry = ProgramRegistry(db)              # or App().programs
    v1 = registry.register("qa", "myapp.qa:build")
    registry.promote("qa", v1.id)
    qa = registry.load("qa")                    # a dspy.Module, the production version

Lifecycle rules and storage: :mod:`dspex.store.programs`. Datasets (imported, versioned, split) live in
:mod:`dspex.programs.datasets`::

    datasets = Datasets(db)                     # or App().datasets
    v = datasets.import_file("qa", "qa.jsonl", inputs=["question"], split={"train": 0.8, "dev": 0.2})
    trainset = datasets.examples("qa", split="train")   # dspy.Example objects, with_inputs("question")
"""

from dspex.programs.datasets import Dataset, Datasets, DatasetStats, DatasetVersion, FieldStats
from dspex.programs.registry import ProgramRegistry
from dspex.store.programs import ProgramRecord, ProgramVersion, VersionStatus

__all__ = [
    "Dataset",
    "DatasetStats",
    "DatasetVersion",
    "Datasets",
    "FieldStats",
    "ProgramRecord",
    "ProgramRegistry",
    "ProgramVersion",
    "VersionStatus",
]
