"""Training: typed configs, a reusable training loop, atomic checkpoints, torchrun data parallelism.

* ``TrainConfig`` (a ``task`` kind and sections ``model``, ``data``, ``optim``, ``trainer``) — what
  ``seqmix train`` reads from YAML and dotted flags; ``seqmix.train.kinds`` lists the task kinds;
* ``Trainer`` — the loop for any model and any task offering ``batch``/``loss``/``evaluate``;
* ``LMTask`` — next-token prediction on a token stream (random or stateful windows);
* ``train`` / ``evaluate_checkpoint`` — the runs behind the CLI, for every task kind.
"""

from seqmix.train.checkpoint import read_checkpoint, resolve_checkpoint, write_checkpoint
from seqmix.train.config import DataConfig, LMModelConfig, OptimConfig, TrainConfig, TrainerConfig
from seqmix.train.data import LMBatch, LMTask, load_lm_data
from seqmix.train.run import evaluate_checkpoint, find_checkpoint, load_model_and_tokenizer, train, train_language_model
from seqmix.train.schedule import build_optimizer, learning_rate
from seqmix.train.trainer import Trainer, TrainResult

__all__ = [
    "TrainConfig",
    "LMModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainerConfig",
    "Trainer",
    "TrainResult",
    "LMTask",
    "LMBatch",
    "load_lm_data",
    "train",
    "train_language_model",
    "evaluate_checkpoint",
    "load_model_and_tokenizer",
    "find_checkpoint",
    "build_optimizer",
    "learning_rate",
    "read_checkpoint",
    "resolve_checkpoint",
    "write_checkpoint",
]
