"""A training stage under torchrun with 2 CPU processes (gloo): it runs, only rank 0 writes
the artifact, and the checkpoint it leaves resumes in a single process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segsllm.data.tokenizer import save_tokenizer


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_train_vae_with_two_cpu_processes_then_resume_on_one(tiny_data_dir, tokenizer, tmp_path):
    tok_dir = save_tokenizer(tokenizer, tmp_path / "tok")
    out = tmp_path / "vae"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = [
        "--data-dir", str(tiny_data_dir), "--out", str(out), "--tokenizer", str(tok_dir),
        "--no-track", "--device", "cpu", "--segmenter", "fixed:k=8",
        "--set", "train.batch_size=8", "--set", "train.eval_batches=2", "--set", "train.log_every=2",
        "--set", "train.eval_every=0", "--set", "train.ckpt_every=4", "--set", "vae.d_model=32",
        "--set", "vae.d_ff=64", "--set", "vae.n_heads=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "segsllm", "train-vae", *common,
           "--set", "train.steps=4"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()
    assert (out / "checkpoints" / "step-0000004").is_dir()
    # The checkpoint written by 2 processes resumes in one process and trains on.
    single = [sys.executable, "-m", "segsllm", "train-vae", *common, "--set", "train.steps=6", "--resume"]
    again = subprocess.run(single, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (out / "checkpoints" / "step-0000006").is_dir()
