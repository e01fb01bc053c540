"""``dapt tune``: ``request`` (the command line), ``space`` (what is searched), ``fit`` (one fit of a trial or of
the final settings), ``objective`` (a trial: its seeds' fits, scored on the few-shot validation split), ``study``
(the study's folder and storage, workers that died, the search loop), ``final`` (the best settings trained again),
``report`` (overlay, trials table, figures, W&B) and ``command``."""

from dapt_lightning.experiments.tune.command import tune_main
from dapt_lightning.experiments.tune.final import train_best
from dapt_lightning.experiments.tune.objective import Objective
from dapt_lightning.experiments.tune.space import DEFAULT_SPACE, SearchSpace, load_space
from dapt_lightning.experiments.tune.study import StudyFolder, open_study, search

__all__ = [
    "DEFAULT_SPACE",
    "Objective",
    "SearchSpace",
    "StudyFolder",
    "load_space",
    "open_study",
    "search",
    "train_best",
    "tune_main",
]
