"""Task kinds for ``seqmix train`` / ``seqmix eval``: each module glues data, a model and metrics.

``lm`` (language modelling), ``seq2seq`` (translation, SCAN), ``seqrec`` (sequential recommendation),
``classify`` (sequence classification), ``forecast`` (time-series forecasting); each exposes
``KIND`` (a ``seqmix.train.kinds.TaskKind``) and is imported on first use.
"""
