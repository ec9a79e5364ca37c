"""Where versions registered before the packages moved look for the score model (kept for them).

A skops file names the class of every object it holds by its module path, and loading imports that path.
Versions registered before ``exampass_pipeline.contract`` existed name ``exampass_pipeline.score_model``;
this module gives that name the one class, so they load unchanged (``tests/contract/test_registry.py``
loads such a version). New versions name ``exampass_pipeline.contract.score_model``.
"""

from exampass_pipeline.contract.score_model import ScoreProbitClassifier

__all__ = ["ScoreProbitClassifier"]
