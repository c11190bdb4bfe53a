"""Synthetic diagnostic tasks: seeded, vectorised generators scored on held-out distributions.

``build_task(name, **params)`` gives a task; ``task.sample(batch_size, seed, split=...)`` a
``TaskBatch``; ``task.eval_settings()`` the held-out distributions (often longer than training);
``task.loss`` / ``task.score`` the objective and the metrics. ``TASKS`` lists them all.
"""

from seqmix.data.synthetic.base import IGNORE, SPLITS, EvalSetting, SyntheticTask, TaskBatch, TaskConfig
from seqmix.data.synthetic.copying import SelectiveCopy, SelectiveCopyConfig
from seqmix.data.synthetic.passkey import Passkey, PasskeyConfig
from seqmix.data.synthetic.recall import MQAR, Induction, InductionConfig, MQARConfig
from seqmix.data.synthetic.registry import TASKS, build_task, list_tasks, task_params
from seqmix.data.synthetic.regression import ICLRegression, ICLRegressionConfig, least_squares_predictions
from seqmix.data.synthetic.sets import SetDisjoint, SetDisjointConfig
from seqmix.data.synthetic.state_tracking import (
    CycleNav,
    CycleNavConfig,
    ModArith,
    ModArithConfig,
    Parity,
    ParityConfig,
    SumMod,
    SumModConfig,
    evaluate_mod_arith,
)

__all__ = [
    "IGNORE", "SPLITS", "TaskBatch", "EvalSetting", "SyntheticTask", "TaskConfig",
    "TASKS", "build_task", "task_params", "list_tasks",
    "MQAR", "MQARConfig", "SelectiveCopy", "SelectiveCopyConfig", "Induction", "InductionConfig",
    "Parity", "ParityConfig", "CycleNav", "CycleNavConfig", "SumMod", "SumModConfig",
    "ModArith", "ModArithConfig", "evaluate_mod_arith", "SetDisjoint", "SetDisjointConfig",
    "ICLRegression", "ICLRegressionConfig", "least_squares_predictions", "Passkey", "PasskeyConfig",
]
