"""Two processes under torchrun (gloo on CPU) train through the unchanged CLI and end with equal weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from seqmix.models import LanguageModel
from seqmix.train.trainer import weights_digest


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed")
def test_torchrun_two_processes_train_and_hold_identical_weights(tmp_path, corpus):
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(
        "model: {d_model: 16, n_layers: 2, pattern: [mingru, attention], dropout: 0.1}\n"
        f"data: {{corpus: {json.dumps(str(corpus))}, seq_len: 16, batch_size: 4, eval_batch_size: 4}}\n"
        "optim: {lr: 0.01, warmup_steps: 2}\n"
        f"trainer: {{out_dir: {json.dumps(str(out))}, max_steps: 6, eval_interval: 3, checkpoint_interval: 3, log_interval: 1, "
        "progress: false, tensorboard: false}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "seqmix.cli", "train", "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # rank 0 alone speaks:
    assert proc.stdout.count("done: 6 steps") == 1 and proc.stdout.count("step 3: val loss") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))  # one writer: every step logged once
    assert train[-1]["tokens"] == 6 * 2 * 4 * 16  # both processes' tokens count
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    n_val = len(corpus.read_text()) - int(len(corpus.read_text()) * 0.9)
    assert all(r["tokens"] == n_val - 1 for r in evals)  # the two shares cover the validation split once
    # each rank hashed its own parameters at the end: equal to each other and to the saved weights
    digests = records[-1]["rank_weights_sha256"]
    saved = weights_digest(LanguageModel.from_pretrained(out / "last"))
    assert len(digests) == 2 and digests[0] == digests[1] == saved
    assert sorted(p.name for p in (out / "last").glob("rank*.safetensors")) == ["rank0.safetensors", "rank1.safetensors"]
