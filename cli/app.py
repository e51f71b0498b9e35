"""The `musetok` command. Each subcommand is a thin wrapper over the Python API.

Exit codes: 0 success; 1 the job ran but some inputs failed (e.g. bad audio files in `tokenize`);
2 bad usage or config (one line on stderr naming the key or file, never a traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("musetok")


def _version() -> str:
    try:
        return version("musetok")
    except PackageNotFoundError:
        return "unknown"


def _add_config_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--config", default=default,
                   help=f"YAML file, or a config name under configs/ (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.codebook_size=1024 (repeatable)")


# ---------------------------------------------------------------------------------------------------
# One function per subcommand: arguments in, one library call, a summary printed.
def cmd_train_tokenizer(a: argparse.Namespace) -> int:
    from musetok.shared.training import resolve_run_config
    from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer

    run = resolve_run_config(TokenizerRunConfig, a.out, a.config, a.overrides, a.resume, "tokenizer")
    r = train_tokenizer(run, a.audio, a.out, resume=a.resume, progress=not a.quiet)
    usage = ", ".join(f"{u:.0f}%" for u in r.valid_usage)
    print(f"tokenizer {r.tokenizer_id} -> {r.out}: {r.steps} steps, valid recon loss {r.valid_recon_loss:.4f}, "
          f"codebook usage {usage}")
    return 0


def cmd_tokenize(a: argparse.Namespace) -> int:
    from musetok.tokenizer.encode_corpus import tokenize

    r = tokenize(a.tokenizer, a.audio, a.out, workers=a.workers, shard=a.shard, with_frames=a.with_frames,
                 device=a.device, progress=not a.quiet)
    i, n = r.shard
    print(f"tokenize{f' shard {i}/{n}' if n > 1 else ''} -> {a.out}: {r.summary()}")
    if r.merged:
        print(f"merged the indexes of {n} shards: {r.merged} files in {a.out}")
    if n == 1 or r.merged:
        print(level_line(a.out))
    for path, why in sorted(r.failed.items()):
        print(f"  failed: {path}: {why}")
    return 1 if r.failed else 0


def level_line(store_dir: str) -> str:
    """What `tokenize` says of the level its store's audio is heard at."""
    from musetok.shared.token_store import TokenStore

    store = TokenStore(store_dir)
    if store.level_db is not None:
        return (f"the store's audio sits at a median of {store.level_db:.1f} dBFS RMS: priors trained on it read "
                "every clip they embed at that level")
    if len(store):
        return ("some files in the store have no level (tokenized before levels were recorded): priors trained on "
                "it read clips at their own level; tokenize into a new store to record them")
    return "the store holds no audio yet"


def cmd_decode(a: argparse.Namespace) -> int:
    from musetok.tokenizer.decode import decode_item

    e = decode_item(a.tokenizer, a.store, a.item, a.out)
    print(f"decoded {e.path} ({e.length} frames) -> {a.out}")
    return 0


def cmd_pretrain(a: argparse.Namespace) -> int:
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.training import resolve_run_config

    run = resolve_run_config(PriorRunConfig, a.out, a.config, a.overrides, a.resume, "prior")
    tokenizer = None
    if a.tokenizer:
        from musetok.tokenizer.builder import load_tokenizer
        tokenizer = load_tokenizer(a.tokenizer)
    r = train_prior(run, a.store, a.out, resume=a.resume, progress=not a.quiet, tokenizer=tokenizer)
    extra = f", accuracy {r.valid_accuracy:.3f}, perplexity {r.valid_perplexity:.2f}" if r.valid_accuracy is not None \
        else ""
    print(f"prior ({run.model.objective}) -> {r.out}: {r.steps} steps, valid loss {r.valid_loss:.4f}{extra}")
    return 0


def level_arg(text: str) -> float | str | None:
    """`--level-db`: a number of dBFS, `auto` or `none`."""
    from musetok.shared.audio import AUTO_LEVEL, is_auto_level, resolve_level
    from musetok.shared.errors import UserError

    if is_auto_level(text):
        return AUTO_LEVEL
    try:
        return resolve_level(text, None)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("level_db: ")) from None


def cmd_embed(a: argparse.Namespace) -> int:
    from musetok.embedding import embed

    r = embed(a.tokenizer, a.prior, a.out, audio=a.audio, store=a.store, layers=a.layers, pool=a.pool, fmt=a.format,
              batch_size=a.batch_size, device=a.device, progress=not a.quiet, level_db=a.level_db)
    print(f"embed -> {r.array_path} {list(r.shape)} + {r.index_path}: {r.count} clips, "
          f"{r.audio_seconds / 3600:.3f} h in {r.wall_seconds:.1f} s ({r.realtime_factor:.0f}x real time), "
          f"{len(r.failed)} failed")
    for path, why in sorted(r.failed.items()):
        print(f"  failed: {path}: {why}")
    return 1 if r.failed else 0


def cmd_make_demo_corpus(a: argparse.Namespace) -> int:
    from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus

    labels = make_demo_corpus(a.out, DemoCorpusConfig(pieces=a.pieces, seconds=a.seconds, seed=a.seed))
    print(f"demo corpus: {a.pieces} pieces of {a.seconds:g} s -> {a.out} (labels: {labels})")
    return 0


def cmd_probe(a: argparse.Namespace) -> int:
    from musetok.evaluation.evaluate import format_table, probe

    results = probe(a.labels, a.column, a.out, task=a.task, embeddings=a.embeddings,
                    baselines=[b for b in a.baselines.split(",") if b], audio=a.audio, sample_rate=a.sample_rate,
                    probes=tuple(a.probes.split(",")), seed=a.seed, level_db=a.level_db)
    print("\n" + format_table(results))
    print(f"\nresults, plots and the run record are in {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from musetok.demo.run import run_demo

    run_demo(a.out, quick=a.quick, seed=a.seed, progress=not a.quiet)
    return 0


def cmd_bench_repr(a: argparse.Namespace) -> int:
    from musetok.evaluation.bench_repr import bench_repr

    command = "musetok " + " ".join(a.argv)
    report, _ = bench_repr(a.out, data=a.data, quick=a.quick, seed=a.seed, probes=tuple(a.probes.split(",")),
                           progress=not a.quiet, command=command.strip(), prior_overrides=a.overrides,
                           priors=tuple(p for p in a.priors.split(",") if p),
                           tokenizer_overrides=a.tokenizer_overrides, pool=a.pool, level_db=a.level_db)
    print("\n" + report.read_text())
    print(f"table, plots and the run record are in {a.out} (report: {report})")
    return 0


def cmd_bundle(a: argparse.Namespace) -> int:
    from musetok.embedding.hear import write_bundle

    out = write_bundle(a.tokenizer, a.prior, a.out, layers=a.layers, combine=a.combine, pool=a.pool,
                       level_db=a.level_db)
    print(f"bundle -> {out} (HEAR module musetok.embedding.hear; check it with: "
          f"hearvalidator musetok.embedding.hear --model {out})")
    return 0


def cmd_relabel(a: argparse.Namespace) -> int:
    from musetok.embedding.relabel import relabel_store

    r = relabel_store(a.prior, a.store, a.out, layer=a.layer, codes=a.codes, fit_frames=a.fit_frames, seed=a.seed)
    print(f"relabel -> {r.out}: {r.files} files written; codes {r.source}, {100 * r.usage:.0f}% of them used, "
          f"k-means inertia {r.inertia:.4f}")
    return 0


def cmd_merge_store(a: argparse.Namespace) -> int:
    from musetok.shared.token_store import TokenStore, merge_indexes

    n = merge_indexes(a.store)
    s = TokenStore(a.store)
    print(f"merged {a.store}: {n} files indexed ({len(s)} ok, {len(s.failed)} failed)")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from musetok.shared.token_store import TokenStore

    s = TokenStore(a.store)
    print(s.summary())
    for e in s.failed:
        print(f"  failed: {e.path}: {e.reason}")
    return 0


# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musetok", description="Self-supervised music representations: "
                                "tokenize audio with a VQ-VAE, pretrain a transformer prior, embed, probe.")
    p.add_argument("--version", action="version", version=f"musetok {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("train-tokenizer", help="train the VQ-VAE tokenizer on a folder of audio")
    _add_config_args(s, "small")
    s.add_argument("--audio", required=True, help="audio folder or manifest CSV (column 'path')")
    s.add_argument("--out", required=True, help="output folder for the tokenizer")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train_tokenizer)

    s = sub.add_parser("tokenize", help="encode a corpus into a token store (resumable)")
    s.add_argument("--tokenizer", required=True, help="trained tokenizer folder")
    s.add_argument("--audio", required=True, help="audio folder or manifest CSV")
    s.add_argument("--out", required=True, help="token store folder (continued if it exists)")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decode worker processes (default: one per core, at most 8; 0 decodes in-process)")
    s.add_argument("--shard", default="", metavar="I/N",
                   help="tokenize only every N-th file starting at I, into its own shards (one process or machine "
                        "per shard; then `musetok merge-store`). Automatic under torchrun")
    s.add_argument("--with-frames", action="store_true",
                   help="also store normalised mel frames (input of the continuous baselines; ~50 MB/hour)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_tokenize)

    s = sub.add_parser("decode", help="decode one store item back to audio (listen to what the codes keep)")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--item", required=True, help="item number or relative path")
    s.add_argument("--out", required=True, help="output audio file (.wav or .flac)")
    s.set_defaults(fn=cmd_decode)

    s = sub.add_parser("pretrain", help="train the transformer prior on a token store")
    _add_config_args(s, "small")
    s.add_argument("--store", required=True, help="token store folder (from `musetok tokenize`)")
    s.add_argument("--out", required=True, help="output folder for the prior")
    s.add_argument("--tokenizer", help="the store's tokenizer folder: only to re-encode transposed windows "
                                       "(model.pitch_shift_codes=recoded or both)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("embed", help="embed clips with a trained tokenizer + prior")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--prior", required=True)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="audio folder or manifest CSV")
    src.add_argument("--store", help="an existing token store (skips tokenizing)")
    s.add_argument("--out", required=True, help="output path; writes OUT.npy (or .npz) and OUT.csv")
    s.add_argument("--layers", default="all", help="all | last | comma-separated numbers or names (default all)")
    s.add_argument("--pool", choices=["meanstdmax", "meanstd", "mean", "max", "none"], default="meanstdmax",
                   help="over time: meanstdmax -> [N, L, 3D] (mean, std, max: what bench-repr probes), meanstd -> "
                        "[N, L, 2D], mean or max -> [N, L, D]; none keeps frames -> [frames, L, D] "
                        "(default meanstdmax)")
    s.add_argument("--format", choices=["npy", "npz"], default="npy")
    s.add_argument("--level-db", type=level_arg, default="auto", metavar="DB",
                   help="bring each audio file to this RMS in dBFS first (e.g. -16); auto (the default): to the "
                        "level of the prior's training audio (as the prior's card says); none: each file as it is")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("probe", help="probe embeddings (and baselines) on a labelled set")
    s.add_argument("--labels", required=True, help="CSV with path,<column>[,split][,group]")
    s.add_argument("--column", default="label", help="label column (default 'label')")
    s.add_argument("--task", default="auto", choices=["auto", "classification", "multilabel", "regression", "key"])
    s.add_argument("--embeddings", action="append", default=[], metavar="[NAME=]EMB.npy",
                   help="output of `musetok embed` (pooled); repeatable")
    s.add_argument("--baselines", default="", help="comma-separated: mfcc,logmel,chroma (computed from audio)")
    s.add_argument("--audio", help="folder the labels' paths are relative to (default: the labels' folder)")
    s.add_argument("--sample-rate", type=int, default=22050, help="rate for the hand-crafted baselines")
    s.add_argument("--level-db", type=level_arg, default=None, metavar="DB",
                   help="bring each clip to this RMS in dBFS before the hand-crafted baselines read it (the level "
                        "on the prior's card reads them as `embed` reads the prior's); default: each as it is")
    s.add_argument("--probes", default="linear,mlp")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_probe)

    s = sub.add_parser("make-demo-corpus", help="synthesise the labelled demo corpus")
    s.add_argument("--out", required=True)
    s.add_argument("--pieces", type=int, default=160)
    s.add_argument("--seconds", type=float, default=8.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_make_demo_corpus)

    s = sub.add_parser("demo", help="the whole pipeline on the demo corpus, with every baseline")
    s.add_argument("--out", default="demo-out")
    s.add_argument("--quick", action="store_true", help="a ~1-minute smoke version")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bars (stage lines stay)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("bench-repr", help="the representation benchmark: pretrain, then probe unseen clips "
                                          "against every baseline on several splits")
    s.add_argument("--out", default="bench-out/repr")
    s.add_argument("--data", help="the real-music dev kit folder (with music/ and notes/) for the real-music suite")
    s.add_argument("--quick", action="store_true", help="a ~2-minute smoke version (tiny sizes)")
    s.add_argument("--probes", default="linear", help="linear and/or mlp (default linear)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a prior setting applied to every prior alike, e.g. model.mask_span=17 (repeatable)")
    s.add_argument("--tokenizer-set", dest="tokenizer_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a tokenizer setting, e.g. model.num_codebooks=4 (repeatable)")
    s.add_argument("--priors", default="codes,frames_codes_conv16_mae,frames",
                   help="which priors to train, comma-separated: the Jukebox route (codes), the recommended prior "
                        "(frames_codes_conv16_mae: frames -> codes + frames with a 16-channel conv front-end along the "
                        "bands, the masked frames left out of the lower blocks) and the continuous control (frames, "
                        "always trained) by default; every lever measured "
                        "is a named preset too (frames_codes_conv16_shift2, frames_codes_conv16_ema, frames_kmeans, "
                        "...: PRIORS in evaluation/bench_repr.py says what each is; an unknown name lists them all)")
    s.add_argument("--pool", choices=["meanstdmax", "meanstd", "mean", "max"], default="meanstdmax",
                   help="how every row is pooled over time (default meanstdmax: mean, std and max, as `embed` "
                        "writes; meanstd gives the tables before 2026-12-07)")
    s.add_argument("--level-db", type=level_arg, default="auto", metavar="DB",
                   help="bring each probed clip to this RMS in dBFS before every row reads it, priors and hand-crafted "
                        "features alike (e.g. -16); auto (the default): each suite's pretraining audio's median "
                        "level, what `embed` does; none: each clip as it is (the earlier tables)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_bench_repr)

    s = sub.add_parser("bundle", help="put a tokenizer and its prior in one folder, for the HEAR API and the Hub")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--prior", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--layers", default="all", help="states that feed HEAR embeddings: all | last | names (default all)")
    s.add_argument("--combine", choices=["concat", "mean"], default="concat",
                   help="how the chosen layers are combined (default concat)")
    s.add_argument("--pool", choices=["meanstdmax", "meanstd", "mean", "max"], default="meanstdmax",
                   help="how scene embeddings pool the frames over time (default meanstdmax: mean, std and max)")
    s.add_argument("--level-db", type=level_arg, default="auto", metavar="DB",
                   help="the bundle brings each sound to this RMS in dBFS first (e.g. -16); auto (the default): to "
                        "the level of the prior's training audio; none: each sound at its own level")
    s.set_defaults(fn=cmd_bundle)

    s = sub.add_parser("relabel", help="second-round codes (HuBERT): k-means on a trained prior's layer, written as a "
                                       "new token store with the same frames, for `pretrain` with model.inputs=frames")
    s.add_argument("--prior", required=True, help="trained prior folder whose states are clustered")
    s.add_argument("--store", required=True, help="the token store (with frames) the prior was trained on")
    s.add_argument("--out", required=True, help="the new token store (continued if it exists)")
    s.add_argument("--layer", default=None, help="layer number or name (default: the middle block)")
    s.add_argument("--codes", type=int, default=512, help="k-means centroids, the new codebook size (default 512)")
    s.add_argument("--fit-frames", type=int, default=100_000, help="states sampled to fit k-means (default 100000)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_relabel)

    s = sub.add_parser("merge-store", help="fold the index files of sharded tokenize runs into one index")
    s.add_argument("store")
    s.set_defaults(fn=cmd_merge_store)

    s = sub.add_parser("info", help="summarise a token store")
    s.add_argument("store")
    s.set_defaults(fn=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user error (bad config, argument or file: `UserError`, or a file the OS
    cannot open) prints one line and returns 2; anything else is a bug and keeps its traceback."""
    logging.basicConfig(level=logging.INFO, format="musetok: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    from musetok.shared.errors import UserError

    try:
        return args.fn(args)
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"musetok {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"musetok {args.command}: interrupted", file=sys.stderr)
        return 130
