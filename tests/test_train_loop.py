"""The generic training loop: exact resume, NaN stop, schedule, accumulation, checkpoints."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from segsllm.config.train import TrainConfig
from segsllm.data.batches import SequentialBatches, ShuffledBatches
from segsllm.errors import ArtifactError, ConfigError
from segsllm.train import checkpoint as ckpt
from segsllm.train.loop import (
    TrainingDivergedError,
    param_groups,
    train,
)
from segsllm.train.schedule import lr_at, lr_multiplier

# --------------------------------------------------------------------------- tiny fixtures


def make_data(n: int = 24, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)  # (N, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)  # (N,)
    return [(x[i], y[i]) for i in range(n)]


class DropoutMLP(nn.Module):
    """Dropout makes the loss depend on the RNG; the LayerNorm and bias test param groups."""

    def __init__(self, hidden: int = 16, p: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.GELU(), nn.Dropout(p), nn.LayerNorm(hidden), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B,)
        return self.net(x).squeeze(-1)


def mse_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch  # (B, 4), (B,)
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"sq_err": float(loss.detach()) * len(y), "n": float(len(y))}


class FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append((step, dict(metrics)))

    def series(self, key: str) -> dict[int, float]:
        return {s: m[key] for s, m in self.calls if key in m}


def cfg_for(**kw) -> TrainConfig:
    base = dict(
        steps=8, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=0, eval_at_start=False,
        log_every=1, ckpt_every=0, keep_last=0, bf16=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def run(out: Path, cfg: TrainConfig, *, model_seed: int = 0, loss_fn=mse_loss, **kw):
    torch.manual_seed(model_seed)
    model = DropoutMLP()
    data = ShuffledBatches(make_data(), cfg.batch_size, seed=1)
    result = train(model, loss_fn, data, cfg, out, progress=False, **kw)
    return model, result


# --------------------------------------------------------------------------- tests


class Crash(Exception):
    pass


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            raise Crash


def test_exact_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    cfg = cfg_for(steps=8, grad_accum=2, ckpt_every=4, eval_every=3, eval_batches=2)
    evals = {"val": SequentialBatches(make_data(8, seed=5), 4)}

    straight_tracker = FakeTracker()
    straight, straight_result = run(tmp_path / "a", cfg, tracker=straight_tracker, eval_data=evals)

    # Same run killed after step 6 (the last checkpoint is step 4), then resumed in a new
    # "process": another model init and scrambled global RNG, which the checkpoint must undo.
    with pytest.raises(Crash):
        run(tmp_path / "b", cfg, eval_data=evals, callbacks=[CrashAt(6)])
    torch.manual_seed(12345)
    resumed_tracker = FakeTracker()
    resumed, result = run(
        tmp_path / "b", cfg, model_seed=99, tracker=resumed_tracker, eval_data=evals, resume=True
    )

    assert result.resumed_from is not None and result.resumed_from.name == "step-0000004"
    a, b = straight_tracker.series("train/loss"), resumed_tracker.series("train/loss")
    assert sorted(b) == [5, 6, 7, 8]
    assert [a[s] for s in b] == [b[s] for s in b]  # bit-identical losses
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert result.step == 8 and result.tokens_seen == straight_result.tokens_seen
    assert result.eval_history == straight_result.eval_history  # restored + continued
    assert [h["step"] for h in result.eval_history] == [3, 6, 8]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def nan_at_5(model, batch):
        calls["n"] += 1
        loss, metrics = mse_loss(model, batch)
        return (loss * math.nan if calls["n"] == 5 else loss), metrics

    cfg = cfg_for(steps=10, ckpt_every=3)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 5; last good checkpoint: .*step-0000003"):
        run(tmp_path, cfg, loss_fn=nan_at_5)

    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000003"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    fresh = DropoutMLP()
    ckpt.load_model_weights(fresh, tmp_path)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    assert ckpt.read_trainer_state(ckpt.latest_checkpoint(tmp_path))["step"] == 3
    _, result = run(tmp_path, cfg, resume=True)  # the good checkpoint resumes
    assert result.step == 10 and math.isfinite(result.train_loss)


def test_schedule_warmup_then_cosine_to_min(tmp_path: Path) -> None:
    cfg = cfg_for(steps=20, warmup_steps=5, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear, never 0
    assert all(a > b for a, b in itertools.pairwise(lrs[5:]))  # strictly decaying
    assert lrs[-1] == pytest.approx(0.1)  # reaches lr * min_lr_ratio at the last step
    assert lr_multiplier(12, warmup_steps=5, total_steps=20, min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 14))
    )
    tracker = FakeTracker()
    run(tmp_path, cfg_for(steps=6, warmup_steps=2, lr=1e-3), tracker=tracker)
    logged = tracker.series("train/lr")
    assert [logged[s] for s in range(1, 7)] == pytest.approx(
        [lr_at(s, cfg_for(steps=6, warmup_steps=2, lr=1e-3)) for s in range(6)]
    )


def test_token_budget_ends_training_and_drives_the_cosine(tmp_path: Path) -> None:
    """train.tokens: the first step whose tokens reach the budget is the last; the cosine runs
    over the fraction of the budget seen; steps is only a cap; resume keeps both."""
    per_row = lambda b: len(b[1])  # noqa: E731 - 4 "tokens" a step (batch of 4)
    cfg = cfg_for(steps=100, tokens=22, warmup_steps=2, lr=1.0, min_lr_ratio=0.1, ckpt_every=2)
    tracker = FakeTracker()
    model, result = run(tmp_path / "a", cfg, tracker=tracker, count_tokens=per_row)
    assert result.step == 6 and result.tokens_seen == 24  # 20 < 22 <= 24: six steps, not 100
    logged = tracker.series("train/lr")
    assert [logged[s] for s in (1, 2)] == pytest.approx([0.5, 1.0])  # warm-up by step
    for step in range(2, 6):  # then the cosine at tokens_seen / budget before the update
        frac = 4 * step / 22
        assert logged[step + 1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    assert lr_at(5, cfg, tokens_seen=22) == pytest.approx(0.1)  # the budget seen: the floor
    assert run(tmp_path / "cap", cfg_for(steps=3, tokens=10_000), count_tokens=per_row)[1].step == 3
    with pytest.raises(Crash):  # killed after step 5, resumed from the step-4 checkpoint
        run(tmp_path / "b", cfg, callbacks=[CrashAt(5)], count_tokens=per_row)
    resumed, again = run(tmp_path / "b", cfg, model_seed=7, resume=True, count_tokens=per_row)
    assert (again.step, again.tokens_seen) == (6, 24)
    for p, q in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ConfigError, match=r"train\.tokens"):
        cfg_for(tokens=0).validate()


def test_grad_accumulation_matches_larger_batch(tmp_path: Path) -> None:
    def linear_run(out: Path, batch_size: int, grad_accum: int) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        cfg = cfg_for(steps=5, batch_size=batch_size, grad_accum=grad_accum, weight_decay=0.1)
        data = ShuffledBatches(make_data(32), batch_size, seed=3)
        loss = lambda m, b: (nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1]), {})  # noqa: E731
        train(model, loss, data, cfg, out, progress=False)
        return model

    a = linear_run(tmp_path / "a", batch_size=4, grad_accum=2)
    b = linear_run(tmp_path / "b", batch_size=8, grad_accum=1)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real = ckpt.save_optimizer
    calls = {"n": 0}

    def failing(optimizer, folder):
        calls["n"] += 1
        if calls["n"] == 2:
            (folder / "optimizer.safetensors").write_bytes(b"half")  # partial file
            raise OSError("disk full")
        real(optimizer, folder)

    monkeypatch.setattr(ckpt, "save_optimizer", failing)
    cfg = cfg_for(steps=4, ckpt_every=2)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, cfg)
    root = tmp_path / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000002"]
    assert (root / "latest").read_text().strip() == "step-0000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000002"]

    # A hard kill leaves the temp folder behind: it never counts and is cleaned on resume.
    junk = root / ".tmp-step-0000004-x"
    junk.mkdir()
    (junk / "trainer_state.json").write_text("{")
    (root / "step-0000009").mkdir()  # no trainer_state.json: incomplete
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000002"
    monkeypatch.setattr(ckpt, "save_optimizer", real)
    _, result = run(tmp_path, cfg, resume=True)
    assert result.resumed_from.name == "step-0000002" and result.checkpoint.name == "step-0000004"
    assert not junk.exists()
    assert (root / "latest").read_text().strip() == "step-0000004"


def test_eval_and_train_metrics_reach_tracker(tmp_path: Path) -> None:
    tracker = FakeTracker()
    evals = {
        "prose": SequentialBatches(make_data(10, seed=7), 4),
        "code": lambda: SequentialBatches(make_data(6, seed=8), 4),  # a factory works too
    }
    reduce = lambda s: {"loss": s["loss"] / s["batches"], "mse": s["sq_err"] / s["n"]}  # noqa: E731
    cfg = cfg_for(steps=4, log_every=2, eval_every=2, eval_at_start=True, eval_batches=None)
    _, result = run(tmp_path, cfg, tracker=tracker, eval_data=evals, reduce_metrics=reduce)

    eval_steps = sorted(s for s, m in tracker.calls if "val/prose/loss" in m)
    assert eval_steps == [0, 2, 4]
    for _, m in tracker.calls:
        if "val/prose/loss" in m:
            assert set(m) == {"val/prose/loss", "val/prose/mse", "val/code/loss", "val/code/mse"}
    train_logs = {s: m for s, m in tracker.calls if "train/loss" in m}
    assert sorted(train_logs) == [2, 4]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mse"} <= set(train_logs[4])
    assert [h["step"] for h in result.eval_history] == [0, 2, 4]
    assert result.final_eval["val/code/mse"] < result.eval_history[0]["val/code/mse"]
    assert result.tokens_seen == 4 * 4 * 4  # steps * batch * features (default token count)


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    run(tmp_path, cfg_for(steps=5, ckpt_every=1, keep_last=2))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]


def test_checkpoint_refusals(tmp_path: Path) -> None:
    run(tmp_path, cfg_for(steps=2), meta={"tokenizer": "abc"})
    with pytest.raises(ArtifactError, match="already holds checkpoints"):
        run(tmp_path, cfg_for(steps=2))
    with pytest.raises(ArtifactError, match="tokenizer='abc'"):
        run(tmp_path, cfg_for(steps=4), resume=True, meta={"tokenizer": "xyz"})
    with pytest.raises(ArtifactError, match="does not fit this model"):
        ckpt.load_model_weights(DropoutMLP(hidden=8), tmp_path)


def test_optimizer_state_roundtrip_without_pickle() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()
    structure, tensors = ckpt.flatten_state(opt.state_dict())
    restored = ckpt.unflatten_state(structure, tensors)
    opt2 = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    opt2.load_state_dict(restored)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for k, s in opt.state_dict()["state"].items():
        for name, t in s.items():
            assert torch.equal(t, opt2.state_dict()["state"][k][name])
    # decay only on the Linear matrix; embedding, bias and LayerNorm are exempt
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4


def test_shuffled_batches_shards_and_resumes() -> None:
    items = list(range(10))
    shards = []
    for r in range(2):
        src = ShuffledBatches(items, 2, list, seed=4, rank=r, world_size=2)
        it = iter(src)
        shards.append({i for _ in range(len(src)) for i in next(it)})  # one epoch
    assert len(shards[0]) == len(shards[1]) == 4 and not shards[0] & shards[1]

    src = ShuffledBatches(items, 3, list, seed=4, rank=0, world_size=1)
    it = iter(src)
    head = [next(it) for _ in range(4)]  # 3 batches per epoch: crosses into epoch 1
    state = src.state_dict()
    tail = [next(it) for _ in range(5)]
    again = ShuffledBatches(items, 3, list, seed=4, rank=0, world_size=1)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2) for _ in range(5)] == tail
    assert state["epoch"] == 1 and head[0] != head[3]  # a new permutation per epoch


def test_resume_says_where_it_picks_up(tmp_path: Path, capsys) -> None:
    cfg = cfg_for(steps=6, ckpt_every=2, eval_every=0)
    with pytest.raises(Crash):
        run(tmp_path, cfg, callbacks=[CrashAt(5)])
    torch.manual_seed(0)
    data = ShuffledBatches(make_data(), cfg.batch_size, seed=1)
    capsys.readouterr()
    train(DropoutMLP(), mse_loss, data, cfg, tmp_path, progress=True, resume=True)
    err = capsys.readouterr().err
    assert f"resuming from step 4 of 6 ({tmp_path / 'checkpoints' / 'step-0000004'})" in err
    train(DropoutMLP(), mse_loss, data, cfg, tmp_path / "fresh", progress=True, resume=True)
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_progress_lines_count_tokens_under_a_token_budget(capsys) -> None:
    """In a log (not a terminal) a token-budgeted run says how far through its budget it is,
    and its last step prints even off the logging grid."""
    from segsllm.train.progress import progress_bar

    with progress_bar(True, 100, 0, every=10, token_budget=500) as bar:
        bar.update(10, 1.5, 100.0, tokens_seen=200)
        bar.update(13, 1.25, 100.0, tokens_seen=520, last=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["train step 10  200/500 tokens  loss 1.5000  100 tok/s",
                   "train step 13  520/500 tokens  loss 1.2500  100 tok/s"]
