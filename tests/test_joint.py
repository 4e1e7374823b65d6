"""The joint teacher: sampling with forced ends, the policy gradient's direction, and
train-splitter --teacher joint end to end at toy size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segsllm.config import load_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["run.track=false", "run.device=cpu", "train.eval_every=0", "train.eval_batches=1", "train.ckpt_every=0",
          "train.log_every=100", "train.warmup_steps=2"]


def test_sample_ends_forces_the_last_token_and_max_len_and_leaves_them_out_of_the_policy():
    from segsllm.train.joint import sample_ends

    draws = np.zeros((2, 8), dtype=bool)
    draws[0, 1] = True  # row 0: a sampled cut after token 1, then 5 more tokens with max_len 3
    draws[1, [0, 1, 2, 6, 7]] = True  # row 1 has 5 real tokens: cuts beyond it are padding
    ends, free = sample_ends(draws, np.array([7, 5]), max_len=3)
    assert ends[0].tolist() == [2, 5, 7] and ends[1].tolist() == [1, 2, 3, 5]
    # Row 0: the ends after tokens 4 (max_len) and 6 (the last) were forced, not sampled.
    assert free[0].tolist() == [True, True, True, True, False, True, False, False]
    assert free[1].tolist() == [True, True, True, True, False, False, False, False]


class _CutAfterFive(torch.nn.Module):
    """A stand-in SLLM whose cost is 1 nat per segment that does not end with token 5: the
    cheapest segmentation cuts after every 5 and nowhere else."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, lengths, is_last=None, return_details=False):
        B, S, _ = ids.shape
        last = ids.gather(2, (lengths - 1).clamp(min=0)[..., None])[..., 0]  # (B, S)
        seg_nll = ((last != 5) & (lengths > 0)).float()
        return {"loss": self.dummy * 0.0, "seg_nll": seg_nll, "stop_nll": torch.zeros(B, S + 1)}


def test_the_policy_gradient_moves_boundaries_toward_what_the_sllm_pays_less_for():
    from segsllm.config.splitter import BoundaryPredictorConfig
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.train.joint import JointChunker

    torch.manual_seed(0)
    pred = BoundaryPredictor(BoundaryPredictorConfig(vocab_size=16, d_model=8, n_layers=2, max_len=16, target_len=4.0,
                                                     lookahead=0))
    model = JointChunker(pred, _CutAfterFive(), max_len=16, target_len=4.0, samples=4)
    opt = torch.optim.Adam(pred.parameters(), lr=3e-2)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, 9, size=(16, 32)))
    mask = torch.ones_like(ids, dtype=torch.bool)

    def gap() -> float:
        with torch.no_grad():
            z = pred(ids, mask)
        return float(z[ids == 5].mean() - z[ids != 5].mean())

    before = gap()
    for _ in range(40):
        opt.zero_grad()
        model(ids, mask)["loss"].backward()
        opt.step()
    assert gap() > before + 1.0  # boundaries after 5 became likelier than elsewhere


def test_the_sampling_rate_is_the_target_whatever_the_logits_say():
    """The rate shift holds mean σ at 1/target per chunk (padding ignored), so the policy can
    move boundaries but never collapse to none or to one per token."""
    from segsllm.config.splitter import BoundaryPredictorConfig
    from segsllm.models.boundary import BoundaryPredictor
    from segsllm.train.joint import JointChunker, rate_shift

    z = torch.tensor([[-26.0, -25.0, -27.0, -26.5, 0.0, 0.0], [5.0, 4.0, 6.0, 5.5, 4.5, 5.2]])
    mask = torch.tensor([[True, True, True, True, False, False], [True] * 6])
    tau = rate_shift(z, mask, 0.25)
    rates = (torch.sigmoid(z - tau) * mask).sum(1) / mask.sum(1)
    assert torch.allclose(rates, torch.tensor([0.25, 0.25]), atol=1e-4)
    # The order inside a chunk is kept: the likeliest boundary stays the likeliest.
    assert int(torch.argmax(z[1] - tau[1])) == 2

    pred = BoundaryPredictor(BoundaryPredictorConfig(vocab_size=16, d_model=8, n_layers=2, max_len=16, target_len=8.0))
    with torch.no_grad():
        pred.head.bias.fill_(-30.0)  # a collapsed predictor: no boundary anywhere
    model = JointChunker(pred, _CutAfterFive(), max_len=16, target_len=4.0, samples=2)
    torch.manual_seed(1)
    ids = torch.randint(1, 9, (32, 64))
    out = model(ids, torch.ones_like(ids, dtype=torch.bool))
    assert 3.0 < float(out["n_tokens"]) / float(out["n_segments"]) < 5.5  # still about 4 tokens a segment


def test_train_splitter_with_the_joint_teacher_gives_a_learned_segmenter(teacher_vae, tiny_data_dir, tokenizer,
                                                                          tmp_path):
    from segsllm.segment import build_segmenter
    from segsllm.train.sllm_em import run_splitter_stage

    out = tmp_path / "splitter-joint"
    cfg = load_config(None, [
        f"data.dir={tiny_data_dir}", f"run.out={out}", f"tokenizer.path={teacher_vae / 'tok'}", *COMMON,
        "segmenter.max_len=8", "splitter.teacher=joint", f"splitter.vae={teacher_vae / 'vae'}",
        "splitter.target_len=4", "splitter.joint_steps=3", "splitter.joint_batch_size=4",
        "splitter.joint_chunk_tokens=24", "splitter.chunk_tokens=48", "splitter.teacher_tokens=300",
        "splitter.teacher_eval_tokens=120", "splitter.calibration_tokens=600", "splitter.predictor.d_model=8",
        "splitter.predictor.n_layers=2", "train.steps=4", "train.batch_size=8", "train.lr=5e-3",
        "backbone.hidden_size=16", "backbone.num_layers=1", "backbone.num_heads=2", "backbone.max_positions=32",
    ])
    result, rounds = run_splitter_stage(cfg, progress=False)
    assert rounds == [] and result.teacher == "joint"
    assert (out / "joint" / "checkpoints").is_dir()  # the joint training's own checkpoints
    teacher = json.loads((out / "manifest.json").read_text())["lineage"]["teacher"]
    assert teacher["name"] == "joint" and teacher["steps"] == 3 and teacher["vae"].endswith("vae")
    val = teacher["validation"]  # the joint objective on validation chunks after training
    assert {"prose/mean_len", "csv/nll_per_token", "code/advantage_abs"} <= set(val)
    assert all(1.0 <= val[f"{d}/mean_len"] <= 8.0 for d in ("prose", "code", "csv"))
    seg = build_segmenter(f"learned:{out}", tokenizer=tokenizer)
    text = "a,b,c\n1,2,3\n"
    assert "".join(seg.split_text(text)) == text
    assert result.metrics["csv"]["max_seg_len"] <= 8
