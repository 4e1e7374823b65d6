"""Causality and the cached generation path on a CUDA device (``scripts/gpu_check.sh``).

The CPU suite proves the rule (docs/DESIGN.md §5) on CPU kernels; on a GPU other attention
kernels run (SDPA flash / memory-efficient, bf16 bodies), so the same checks are repeated
there: replacing segments k+1.. leaves every prediction for segments ≤ k unchanged, a
bidirectional backbone is caught, and prefill + cached steps equal the full forward.
Skipped without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
]

from test_sllm import FAMILIES, batch_of, random_doc, tiny_sllm  # noqa: E402

from segsllm.models import sllm as sllm_mod  # noqa: E402
from segsllm.models.sllm import hidden_states_cached  # noqa: E402

# float32 bodies agree to float rounding across sequence lengths; bf16 bodies to bf16 rounding
# of the outputs (the rule is "unchanged", a leak moves them by orders of magnitude more).
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _model(family: str, dtype: torch.dtype):
    model = tiny_sllm(family).cuda()
    model.backbone.to(dtype)  # the body in the dtype under test; the VAE and projections stay float32
    return model


def _details(model, docs) -> dict:
    b = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch_of(docs).items()}
    with torch.no_grad():
        return model(b["ids"], b["lengths"], is_last=b["is_last"], return_details=True)


def _violation(model, seed: int = 0) -> float:
    """Largest change of earlier predictions when segments k+1.. of document 0 are replaced."""
    rng = np.random.default_rng(seed)
    doc, others = random_doc(rng, 6), [random_doc(rng, 3), random_doc(rng, 8)]
    ref = _details(model, [doc, *others])
    worst = 0.0
    for k in range(1, len(doc)):
        for n_new in (0, 2, 9):
            got = _details(model, [doc[:k] + random_doc(rng, n_new), *others])
            worst = max(worst, float((got["seg_nll"][0, :k] - ref["seg_nll"][0, :k]).abs().max()))
            worst = max(worst, float((got["stop_logits"][0, : k + 1] - ref["stop_logits"][0, : k + 1]).abs().max()))
    return worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_later_segments_leave_earlier_predictions_unchanged_on_cuda(family, dtype):
    assert _violation(_model(family, dtype)) < TOL[dtype]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_the_check_catches_a_bidirectional_backbone_on_cuda(family, monkeypatch):
    model = _model(family, torch.float32)

    def leaky(m, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False):
        """test_sllm's leaky_body_forward with its masks on the inputs' device."""
        B, S, _ = inputs_embeds.shape
        keys = (torch.ones(B, S, dtype=torch.bool, device=inputs_embeds.device) if attention_mask is None
                else attention_mask.bool())
        full = keys[:, None, None, :].expand(B, 1, S, S)  # (B, 1, S, S): no causal triangle
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)
        return m.base_model(inputs_embeds=inputs_embeds, attention_mask=full, position_ids=positions)[0], None

    monkeypatch.setattr(sllm_mod, "body_forward", leaky)
    assert _violation(model) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_plus_cached_steps_equal_the_full_forward_on_cuda(family, dtype):
    model = _model(family, dtype)
    doc = random_doc(np.random.default_rng(2), 7)
    full = _details(model, [doc])["hidden"]  # (1, 8, H)
    with torch.no_grad():
        cached, _ = hidden_states_cached(model, [torch.tensor(s) for s in doc], prefill=3)
    assert (cached - full).abs().max() < TOL[dtype] * max(1.0, float(full.abs().max()))
