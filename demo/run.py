"""`musetok demo`: the whole pipeline on the built-in demo corpus, with every baseline, in one folder.

    corpus -> train tokenizer -> tokenize (+ mel frames) -> pretrain prior (mlm) and the continuous
    control (masked_frames) -> embed (prior, random-weights prior, masked_frames, bag of codes)
    -> hand-crafted baselines (MFCC, log-mel, chroma) -> probes (instrument, key, tempo class)
    -> results table + report.md with the plots.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus
from musetok.embedding import Embedder
from musetok.evaluation.baselines import bag_of_codes, handcrafted_features
from musetok.evaluation.evaluate import FeatureSet, format_table, run_probes
from musetok.prior.builder import build_prior_for_store
from musetok.prior.train import PriorRunConfig, train_prior
from musetok.shared.config import load_config
from musetok.shared.token_store import TokenStore
from musetok.tokenizer.builder import load_tokenizer
from musetok.tokenizer.encode_corpus import tokenize_corpus
from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer

log = logging.getLogger("musetok")

TARGETS = [("instrument", "classification"), ("key", "key"), ("tempo_class", "classification")]


@dataclass
class DemoSizes:
    pieces: int
    seconds: float
    tokenizer_steps: int
    prior_steps: int


FULL = DemoSizes(pieces=160, seconds=8.0, tokenizer_steps=1000, prior_steps=600)
QUICK = DemoSizes(pieces=48, seconds=6.0, tokenizer_steps=120, prior_steps=80)


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into `out`; returns the path of report.md."""
    sizes = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    times: dict[str, float] = {}
    n_stages = 8

    def stage(i: int, name: str):
        print(f"[{i}/{n_stages}] {name} ... ({time.time() - t_start:.0f} s so far)", flush=True)
        return time.time()

    t = stage(1, f"making the demo corpus ({sizes.pieces} pieces x {sizes.seconds:.0f} s)")
    corpus = out / "corpus"
    labels = make_demo_corpus(corpus, DemoCorpusConfig(pieces=sizes.pieces, seconds=sizes.seconds, seed=seed))
    times["corpus"] = time.time() - t

    t = stage(2, f"training the small tokenizer ({sizes.tokenizer_steps} steps)")
    tok_run = load_config(TokenizerRunConfig, "small", [f"train.steps={sizes.tokenizer_steps}", f"train.seed={seed}"],
                          kind="tokenizer")
    tok_res = train_tokenizer(tok_run, corpus, out / "tokenizer", progress=progress)
    times["tokenizer"] = time.time() - t

    t = stage(3, "tokenizing the corpus (codes + mel frames)")
    tok = load_tokenizer(out / "tokenizer")
    tokenize_corpus(tok, corpus, out / "store", progress=progress, with_frames=True)
    store = TokenStore(out / "store")
    times["tokenize"] = time.time() - t

    priors = {}
    for i, objective in ((4, "mlm"), (5, "masked_frames")):
        t = stage(i, f"pretraining the small prior, objective {objective} ({sizes.prior_steps} steps)")
        run = load_config(PriorRunConfig, "small", [f"model.objective={objective}", f"train.steps={sizes.prior_steps}",
                                                    f"train.seed={seed}"], kind="prior")
        train_prior(run, out / "store", out / f"prior_{objective}", progress=progress)
        priors[objective] = out / f"prior_{objective}"
        times[f"prior_{objective}"] = time.time() - t

    t = stage(6, "embedding: prior, random-weights prior, masked_frames, bag of codes")
    paths = [e.path for e in store.items]
    sets = []
    for name, prior_dir in (("musetok (mlm prior)", priors["mlm"]), ("masked_frames prior", priors["masked_frames"])):
        emb = Embedder.from_pretrained(out / "tokenizer", prior_dir)
        sets.append(_embed_store(emb, store, name))
    rand_cfg = load_config(PriorRunConfig, "small", [f"train.seed={seed}"], kind="prior").model
    torch.manual_seed(seed)
    sets.append(_embed_store(Embedder(tok, build_prior_for_store(rand_cfg, store)), store, "random-weights prior"))
    boc = np.stack([bag_of_codes(np.asarray(store.codes(i)), store.meta.codebook_size) for i in range(len(store))])
    sets.append(FeatureSet("bag of codes", boc, paths, ["histogram"]))
    times["embed"] = time.time() - t

    t = stage(7, "hand-crafted baselines: MFCC, log-mel, chroma")
    hand = handcrafted_features([corpus / p for p in paths], tok.sample_rate)
    for key, name in (("mfcc", "mfcc mean/std"), ("logmel", "log-mel mean/std"), ("chroma", "chroma mean/std")):
        sets.append(FeatureSet(name, hand[key], paths, [name]))
    times["baselines"] = time.time() - t

    t = stage(8, "probing every feature set (linear + MLP, layer chosen on validation)")
    results = run_probes(sets, labels, TARGETS, out / "probe", seed=seed)
    times["probe"] = time.time() - t
    total = time.time() - t_start

    table = format_table(results)
    print("\n" + table + "\n")
    print("test metric of the layer chosen on validation [layer]; key: mir_eval weighted score")
    report = _write_report(out, table, results, times, total, tok_res, sizes)
    print(f"\ndemo finished in {total:.0f} s; everything is in {out}; report: {report}")
    return report


def _embed_store(emb: Embedder, store: TokenStore, name: str) -> FeatureSet:
    discrete = emb.prior.cfg.discrete
    inputs = [np.asarray(store.codes(i)) if discrete else
              np.asarray(store.frames_window(i, 0, store.items[i].length), dtype=np.float32) for i in range(len(store))]
    x = np.stack([e.pooled().numpy() for e in emb.embed_inputs(inputs)])  # (N, L, D)
    return FeatureSet(name, x, [e.path for e in store.items], emb.layer_names)


def _write_report(out: Path, table: str, results, times: dict, total: float, tok_res, sizes: DemoSizes) -> Path:
    lines = ["# musetok demo report", "",
             f"Demo corpus: {sizes.pieces} synthetic pieces of {sizes.seconds:.0f} s (corpus/labels.csv). "
             f"Tokenizer: {sizes.tokenizer_steps} steps, "
             f"validation reconstruction loss {tok_res.valid_recon_loss:.4f}, "
             f"codebook usage {', '.join(f'{u:.0f}%' for u in tok_res.valid_usage)}. "
             f"Priors: {sizes.prior_steps} steps each.", "",
             "## Probe results (test metric of the layer chosen on validation)", "", "```", table, "```", "",
             "Key is scored with mir_eval's weighted score "
             "(fifths, relative and parallel keys get partial credit).", "",
             "![instrument](probe/probe_instrument.png)", "![key](probe/probe_key.png)",
             "![tempo](probe/probe_tempo_class.png)", "", "## Which layer knows what", ""]
    for p in sorted((out / "probe").glob("layers_*.png")):
        lines.append(f"![{p.stem}](probe/{p.name})")
    lines += ["", "## Tokenizer", "", "![reconstruction](tokenizer/reconstruction.png)",
              "![codebook usage](tokenizer/codebook_usage.png)", "", "## Priors", "",
              "![mlm](prior_mlm/training_curve.png)", "![masked_frames](prior_masked_frames/training_curve.png)", "",
              "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()] + [f"| **total** | **{total:.0f}** |", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
