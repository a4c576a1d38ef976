"""What a task is: the contract between task plugins and the rest of nlpkit, with the data
readers (``nlpkit.tasks.readers``) and metrics (``nlpkit.tasks.metrics``) tasks share.

This package is the bottom layer: it never imports nlpkit's models, inference, store,
stream or cli packages, so a task plugin depends on nothing that loads or runs a model.
"""

from nlpkit.tasks.base import EncodedExample, Example, Prediction, Record, Task, TaskModel, TaskOption, Window
from nlpkit.tasks.probabilities import softmax

__all__ = [
    "EncodedExample",
    "Example",
    "Prediction",
    "Record",
    "Task",
    "TaskModel",
    "TaskOption",
    "Window",
    "softmax",
]
