"""Shared fixtures: a small byte-level BPE tokenizer trained in-process on mixed text."""

from __future__ import annotations

import os

import pytest

# Tests never talk to a real tracking server or a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SEGSLLM_NO_PLUGINS", "0")

PROSE = (
    "Fellow-Citizens of the Senate and House of Representatives: Among the vicissitudes "
    "incident to life no event could have filled me with greater anxieties. "
    "\"We hold these truths to be self-evident,\" he said; the crowd cheered! Did they? "
    "Yes... and then—silence.\n\nThe Union is strong.\r\nA new line, with CRLF.\r\n"
)
CODE = (
    "import os\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Add two ints.\"\"\"\n"
    "    return a + b  # simple\n\n\nclass Foo(object):\n\tdef bar(self):\n\t\treturn {'x': [1, 2, 3]}\n"
)
CSV = '"","mpg","cyl","disp"\n"Mazda RX4",21,6,160\n"Datsun 710",22.8,4,108\n"Valiant",18.1,6,225\n'
CJK = "你好，世界。这是一个测试！真的吗？是的；好的：「引号」…结束。\n"
SAMPLE_TEXTS = [PROSE, CODE, CSV, CJK]


@pytest.fixture(scope="session")
def tokenizer():
    """A 512-token byte-level BPE trained on prose, code, CSV and CJK samples."""
    from segsllm.data.tokenizer import train_bpe

    return train_bpe(SAMPLE_TEXTS * 20, vocab_size=512, min_frequency=2)


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory):
    """The session tokenizer saved to a folder (what ``tokenizer.path`` points at)."""
    from segsllm.data.tokenizer import save_tokenizer

    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"))


def stage_config(data_dir, out, *overrides):
    """A stage's config on the CPU, untracked, reading ``data_dir`` and writing ``out``."""
    from segsllm.config import load_config

    return load_config(
        None, [f"data.dir={data_dir}", f"run.out={out}", "run.track=false", "run.device=cpu", *overrides]
    )


@pytest.fixture(scope="session")
def sample_texts() -> dict[str, str]:
    return {"prose": PROSE, "code": CODE, "csv": CSV, "cjk": CJK}


def _variants(base: str, n: int, domain: str) -> list[str]:
    """``n`` distinct documents derived from one sample (numbers and names vary)."""
    out = []
    for i in range(n):
        if domain == "csv":
            rows = "".join(f'"row{i}_{j}",{i * 1.5 + j:.1f},{(i + j) % 8},{100 + i * j}\n' for j in range(6))
            out.append(base + rows)
        elif domain == "code":
            out.append(base + f"\n\ndef helper_{i}(x):\n    return x * {i} + {i % 7}\n")
        else:
            out.append(base + f"In the year {1790 + i}, Congress met {i % 5 + 1} times. Thank you.\n")
    return out


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data folder with small prepared prose, code and csv corpora (real store format)."""
    from segsllm.data.dedup import DedupConfig
    from segsllm.data.store import RawDoc, write_corpus

    class ListSource:
        def __init__(self, name: str, texts: list[str]) -> None:
            self.name, self.texts, self.total = name, texts, len(texts)

        def records(self):
            for i, text in enumerate(self.texts):
                yield RawDoc(id=f"{self.name}/{i:04d}", data=text)

        def info(self):
            return {"source": "tests", "version": "0", "sha256": f"test-{self.name}", "fallback_used": False}

    root = tmp_path_factory.mktemp("data")
    for domain, base in (("prose", PROSE), ("code", CODE), ("csv", CSV)):
        # The documents are variants of one template: near-duplicate grouping would put them
        # all in one split, so only exact duplicates are collapsed here.
        write_corpus(root, ListSource(domain, _variants(base, 60, domain)), 0.15, 0.15,
                     dedup=DedupConfig(near_duplicates=False))
    return root


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared, busy CPU: one thread is much faster than several fighting.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``; restored after the module.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def teacher_vae(tiny_data_dir, tokenizer, tmp_path_factory):
    """``root`` with ``tok/`` and ``vae/``: a SentenceVAE trained briefly on random spans of
    up to 8 tokens, the unbiased teacher VAE of hard EM and the joint teacher."""
    import torch

    from segsllm.config import load_config
    from segsllm.data.tokenizer import save_tokenizer
    from segsllm.train.teachers import teacher_vae_segmenter
    from segsllm.train.vae_stage import train_vae

    root = tmp_path_factory.mktemp("teacher-vae")
    tok = save_tokenizer(tokenizer, root / "tok")
    cfg = load_config(None, [
        f"data.dir={tiny_data_dir}", f"run.out={root / 'vae'}", f"tokenizer.path={tok}", "run.track=false",
        "run.device=cpu", "train.eval_every=0", "train.eval_batches=1", "train.ckpt_every=0", "train.log_every=100",
        "train.warmup_steps=2", f"segmenter.spec={teacher_vae_segmenter(8)}", "segmenter.max_len=8",
        "train.steps=8", "train.batch_size=16", "train.lr=3e-3", "vae.d_model=16", "vae.n_heads=2", "vae.d_ff=32",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vae(cfg, progress=False, exact_match_segments=1, n_samples=0)
    finally:
        torch.set_num_threads(threads)
    return root


def tiny_vae(vocab_size: int, max_len: int = 16, *, d_model: int = 32, n_heads: int = 4, **kw):
    """A small SentenceVAE (d_ff = 2 x d_model) drawn from torch's current RNG state."""
    from segsllm.config.vae import SentenceVAEConfig
    from segsllm.models.vae import SentenceVAE

    return SentenceVAE(SentenceVAEConfig(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads,
                                         d_ff=2 * d_model, max_len=max_len, **kw))


def tiny_backbone(tokenizer=None, *, vocab_size: int | None = None, family: str = "llama", hidden_size: int = 32,
                  num_layers: int = 2, num_heads: int = 4, max_positions: int = 64, **kw):
    """A from-scratch ``tiny`` backbone sized by ``tokenizer`` (or ``vocab_size``), from
    torch's current RNG state; returns the :class:`Backbone` (``.model`` is the LM)."""
    from segsllm.config.backbone import BackboneConfig
    from segsllm.models.backbone import load_backbone

    cfg = BackboneConfig(spec="tiny", family=family, hidden_size=hidden_size, num_layers=num_layers,
                         num_heads=num_heads, max_positions=max_positions, **kw)
    return load_backbone(cfg, tokenizer=tokenizer) if vocab_size is None else load_backbone(cfg, vocab_size=vocab_size)
