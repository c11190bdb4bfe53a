"""Models built from the mixers: the residual block, a language model, a sequence classifier, a regressor,
an encoder-decoder.

Composition only -- every registered mixer works in every model, alone or in a hybrid pattern.
"""

from seqmix.models.bidirectional import Bidirectional
from seqmix.models.block import Block
from seqmix.models.classifier import SequenceClassifier
from seqmix.models.config import BackboneConfig, ClassifierConfig, ModelConfig, RegressorConfig, StackConfig
from seqmix.models.forecaster import Forecaster, ForecasterConfig
from seqmix.models.language_model import LanguageModel
from seqmix.models.pretrained import atomic_write_bytes, load_config_json
from seqmix.models.recommender import Recommender, RecommenderConfig
from seqmix.models.regressor import SequenceRegressor
from seqmix.models.seq2seq import Seq2Seq
from seqmix.models.seq2seq_config import Seq2SeqConfig

__all__ = [
    "Bidirectional",
    "Block",
    "BackboneConfig",
    "ClassifierConfig",
    "ModelConfig",
    "RegressorConfig",
    "StackConfig",
    "SequenceRegressor",
    "LanguageModel",
    "SequenceClassifier",
    "Forecaster",
    "ForecasterConfig",
    "Recommender",
    "RecommenderConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "atomic_write_bytes",
    "load_config_json",
]
