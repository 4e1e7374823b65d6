"""Hard EM for the ``sllm`` teacher: train an SLLM on S_t, relabel, retrain (docs/DESIGN.md §6).

One round t (``splitter.em_rounds`` of them, S_0 = ``splitter.em_init``):

1. **M step** — finetune an SLLM on segmentation S_t (:func:`finetune_sllm`), with the
   fixed teacher SentenceVAE ``splitter.vae`` (trained on random spans, so it encodes any
   span) and the backbone ``splitter.base_lm`` (a ``train-lm`` folder; unset: ``backbone``),
   trained with ``splitter.em_sllm`` overrides; its validation bits/byte is round t's number.
2. **E step** — the :class:`~segsllm.train.sllm_teacher.SLLMTeacher` of that SLLM scores
   every candidate span under S_t, the DP picks S_{t+1}, and a boundary predictor learns it
   (:func:`train_splitter`): ``learned:DIR`` is S_{t+1}.

Round folders live under ``OUT/em/round-<t>/{sllm,splitter}``; the last round's splitter is
``OUT`` itself (the stage's artifact), and ``OUT/em.json`` records every round (written
before that last splitter, so the manifest stays the last file written). A rerun with the
same configuration (``OUT/em/key.json``) reuses finished round folders, so EM resumes
where it stopped; another configuration is refused. The last S_R is scored by the
pipeline, which builds its own VAE and SLLM on every learned splitter.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsllm.errors import ConfigError

EM_FILE = "em.json"


@dataclass
class EMRound:
    """One hard-EM round: the SLLM trained on S_t and the splitter (S_{t+1}) it taught."""

    round: int
    segmentation: str  # S_t's spec
    sllm_dir: str
    splitter_dir: str
    bits_per_byte: dict[str, float] = field(default_factory=dict)  # domain -> SLLM on S_t, validation
    mean_segment_len: dict[str, float] = field(default_factory=dict)  # domain -> S_t's mean length
    next_mean_len: dict[str, float] = field(default_factory=dict)  # domain -> S_{t+1} (validation)


@dataclass
class EMResult:
    """Every round, and the final splitter stage's result (its folder is ``learned:OUT``)."""

    rounds: list[EMRound]
    final: Any  # SplitterStageResult


def _finished(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and (folder / "metrics.json").is_file()


def _final_metrics(folder: Path) -> dict[str, dict[str, float]]:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("final", {})


def round_sllm_config(cfg: Any, out_dir: Path, segmentation: str) -> Any:
    """The config of one round's SLLM: the stage's, with ``splitter.em_sllm`` applied, the
    backbone ``splitter.base_lm`` and segmenter S_t. Boundaries are always ``eos``: the
    teacher prices a span's EOS and stop decision (S_t is in general not causal)."""
    from segsllm.config.loader import apply_overrides

    c = apply_overrides(cfg, list(cfg.splitter.em_sllm), origin="splitter.em_sllm")
    backbone = c.backbone if not cfg.splitter.base_lm else dataclasses.replace(c.backbone, spec=str(cfg.splitter.base_lm))
    return dataclasses.replace(c, run=dataclasses.replace(c.run, out=str(out_dir)), backbone=backbone,
                               segmenter=dataclasses.replace(c.segmenter, spec=segmentation),
                               sllm=dataclasses.replace(c.sllm, boundaries="eos"))


def _check(cfg: Any) -> None:
    sp = cfg.splitter
    if not sp.vae:
        raise ConfigError("sllm-teacher EM needs the teacher SentenceVAE: --vae DIR (train-vae on random spans, "
                          "--segmenter segsllm.segment.random_span:RandomSpanSegmenter:max_len=N)")
    for what, path in (("--vae", sp.vae), ("--base-lm", sp.base_lm)):
        if path and not Path(path).is_dir():
            raise ConfigError(f"{what}: no folder at {path}")
    if not cfg.run.out:
        raise ConfigError("train-splitter needs an output folder: --out DIR (or run.out)")


def em_key(cfg: Any) -> str:
    """Hash of what the rounds depend on (every section but run, pipeline and bench, plus
    the seed): finished round folders are reused only under the same key."""
    import hashlib

    from segsllm.config.root import key_dict

    d = key_dict(cfg)
    picked = {k: v for k, v in d.items() if k not in ("run", "pipeline", "bench")}
    picked["seed"] = d["run"]["seed"]
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _claim(em_dir: Path, key: str) -> None:
    """Record the EM key in ``em_dir``; refuse (one line) rounds left by another configuration."""
    from segsllm.io import atomic_write_json

    marker = em_dir / "key.json"
    if marker.is_file():
        old = json.loads(marker.read_text(encoding="utf-8")).get("key")
        if old != key:
            raise ConfigError(f"{em_dir} holds EM rounds of another configuration; use a new --out "
                              "(or delete that folder) to rerun them")
        return
    em_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"key": key})


def hard_em(cfg: Any, *, resume: bool = False, progress: bool = True,
            log: Callable[[str], None] | None = None) -> EMResult:
    """Run ``cfg.splitter.em_rounds`` rounds of hard EM (see the module docstring)."""
    from segsllm.io import atomic_write_json
    from segsllm.train.sllm_stage import finetune_sllm
    from segsllm.train.splitter_stage import train_splitter

    say = log or (lambda msg: None)
    cfg.splitter.validate()
    _check(cfg)
    out = Path(cfg.run.out)
    _claim(out / "em", em_key(cfg))
    rounds: list[EMRound] = []
    segmentation = cfg.splitter.em_init
    final = None
    for t in range(cfg.splitter.em_rounds):
        rdir = out / "em" / f"round-{t}"
        sllm_dir = rdir / "sllm"
        if _finished(sllm_dir):
            say(f"EM round {t}: SLLM on {segmentation} already trained ({sllm_dir})")
        else:
            say(f"EM round {t}: training the SLLM on {segmentation}")
            with warnings.catch_warnings():  # the random-span VAE meets S_t's segments by design
                warnings.filterwarnings("ignore", message=".*differs from the one the SentenceVAE was trained with")
                finetune_sllm(round_sllm_config(cfg, sllm_dir, segmentation), cfg.splitter.vae,
                              segmenter=segmentation, resume=resume and (sllm_dir / "checkpoints").is_dir(),
                              progress=progress, sample_tokens=0)
        m = _final_metrics(sllm_dir)
        last = t == cfg.splitter.em_rounds - 1
        spl_dir = out if last else rdir / "splitter"
        record = EMRound(t, segmentation, str(sllm_dir.resolve()), str(spl_dir.resolve()),
                         {d: float(v["bits_per_byte"]) for d, v in m.items() if "bits_per_byte" in v},
                         {d: float(v["mean_segment_len"]) for d, v in m.items() if "mean_segment_len" in v})
        rounds.append(record)
        if last:  # before the final splitter: its manifest must stay the folder's last file
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / EM_FILE, {"rounds": [dataclasses.asdict(r) for r in rounds]})
        spl_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(spl_dir)),
                                      splitter=dataclasses.replace(cfg.splitter, sllm=str(sllm_dir)))
        if not last and _finished(spl_dir):
            say(f"EM round {t}: splitter already trained ({spl_dir})")
            metrics = _final_metrics(spl_dir)
        else:
            say(f"EM round {t}: relabelling with the SLLM and training the splitter")
            final = train_splitter(spl_cfg, resume=resume and (spl_dir / "checkpoints").is_dir(),
                                   progress=progress, log=log)
            metrics = final.metrics
        record.next_mean_len = {d: float(v["mean_len"]) for d, v in metrics.items() if "mean_len" in v}
        segmentation = f"learned:{spl_dir.resolve()}"
    return EMResult(rounds, final)


def run_splitter_stage(cfg: Any, *, resume: bool = False, progress: bool = True,
                       log: Callable[[str], None] | None = None) -> tuple[Any, list[EMRound]]:
    """The ``train-splitter`` stage for any teacher: hard EM for ``sllm`` without an SLLM
    folder, one :func:`train_splitter` otherwise. Returns (stage result, EM rounds or [])."""
    from segsllm.train.splitter_stage import train_splitter

    if cfg.splitter.teacher == "sllm" and not cfg.splitter.sllm:
        em = hard_em(cfg, resume=resume, progress=progress, log=log)
        return em.final, em.rounds
    return train_splitter(cfg, resume=resume, progress=progress, log=log), []


__all__ = ["EMResult", "EMRound", "em_key", "hard_em", "round_sllm_config", "run_splitter_stage"]
