"""Stage-2 benchmark: prior training throughput vs Hugging Face BERT and GPT-2, and embedding speed.

    python benchmarks/bench_prior.py [--rounds 5] [--steps 5] [--skip-embedding | --embedding-only]

Same width / depth / heads / sequence / batch for every model (default hidden 256, 4 layers,
4 heads, seq 512, batch 8, vocabulary 512, fp32 or, with `--dtype bfloat16`, all under CPU bf16
autocast; no dropout, fused AdamW for all). Models are timed in interleaved rounds (A B C D A B C D
...) so machine noise hits all alike; the median step time per model is reported, as training tokens
per second and as a fraction of this machine's fp32 matmul peak measured in the same run. The speed
against the faster HF model is paired: its step time over the model's in each round, median and range
over the rounds (a shared machine's speed drifts by 10-20% between runs, which a ratio of two medians
from different moments does not cancel). HF BERT is timed twice, with its default fused attention (`sdpa`) and
with its attention written out (`eager`, faster on a CPU in bf16 for short windows), and the ratio is taken
against the fastest HF model. `--models` keeps the models whose names contain one of its
comma-separated parts (the HF models are always timed). FLOPs per token use nanoGPT's estimate for
every model: 6 * (transformer-block parameters) + 12 * layers * seq * hidden.

Then embedding throughput (audio seconds per wall second: tokenize + prior) of the `small`
configs on synthetic music.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared.training import make_optimizer


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def block_params(model: torch.nn.Module, names: tuple[str, ...]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in names))


def autocast(args):
    """`--dtype bfloat16`: every model's forward under CPU bf16 autocast (what `train.dtype: bfloat16` does),
    weights and optimizer in fp32."""
    if args.dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_runners(args):
    v, d, l, h, t, b = args.vocab, args.hidden, args.layers, args.heads, args.seq, args.batch
    codes = torch.randint(0, v, (b, 1, t))
    runners = {}

    fdim = 200  # the small tokenizer's stacked frames: 2 x 100 semitone bands per code frame
    frames = torch.randn(b, t, fdim)
    chroma = torch.softmax(torch.randn(b, t, 2, 12), -1)  # aux_chroma's targets: 12 pitch classes per mel frame
    for name, objective, inputs, targets, aux, aux_chroma, conv, mlp in (  # conv: the band convolution's channels
            ("mlm", "mlm", "codes", "codes", 0.0, 0.0, 0, "gelu"), ("ar", "ar", "codes", "codes", 0.0, 0.0, 0, "gelu"),
            ("mlm frames->codes", "mlm", "frames", "codes", 0.0, 0.0, 0, "gelu"),
            ("mlm frames->codes+frames", "mlm", "frames", "codes", 1.0, 0.0, 0, "gelu"),
            ("mlm frames->codes+frames, conv front-end 32 ch", "mlm", "frames", "codes", 1.0, 0.0, 32, "gelu"),
            ("mlm frames->codes+frames, conv front-end 16 ch", "mlm", "frames", "codes", 1.0, 0.0, 16, "gelu"),
            ("mlm frames->codes+frames, conv front-end 16 ch, ReLU MLP", "mlm", "frames", "codes", 1.0, 0.0, 16,
             "relu"),
            ("mlm frames->codes+frames, conv front-end 8 ch", "mlm", "frames", "codes", 1.0, 0.0, 8, "gelu"),
            ("mlm frames->codes+frames, conv front-end 16 ch, MAE: masked frames join at the last block", "mlm",
             "frames", "codes", 1.0, 0.0, 16, "gelu"),
            ("mlm frames->codes+frames+chroma", "mlm", "frames", "codes", 1.0, 1.0, 0, "gelu"),
            ("mlm frames->random", "mlm", "frames", "random", 0.0, 0.0, 0, "gelu")):
        cfg = PriorConfig(objective=objective, inputs=inputs, targets=targets, aux_frames=aux, aux_chroma=aux_chroma,
                          dim=d, layers=l, heads=h, max_len=t, codebook_size=v, num_codebooks=1, frame_dim=fdim,
                          frame_bands=fdim // 2, frame_conv=conv > 0, conv_channels=conv or 32,
                          chroma_dim=24 if aux_chroma else 0, mlp=mlp, decoder_layers=1 if "MAE" in name else 0)
        model = Prior(cfg)
        opt = make_optimizer(model, 1e-4, 0.1)
        batch = Batch(codes, frames if cfg.uses_frames else None, torch.full((b,), t), torch.arange(b),
                      chroma if aux_chroma else None)

        def step(model=model, opt=opt, batch=batch):
            with autocast(args):
                o = compute_loss(model, batch)
            o.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        runners[f"musetok {name}"] = (step, block_params(model, ("blocks.",)))

    try:
        from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("transformers not installed (pip install -e '.[bench]'): skipping the Hugging Face models")
        return runners
    ids = codes[:, 0]
    def bert(attention: str):
        return BertForMaskedLM(BertConfig(vocab_size=v + 1, hidden_size=d, num_hidden_layers=l, num_attention_heads=h,
                                          intermediate_size=4 * d, max_position_embeddings=t, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0, attn_implementation=attention))
    labels = ids.clone()
    labels[torch.rand(ids.shape) > 0.3] = -100
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=d, n_layer=l, n_head=h, n_positions=t, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa"))
    # HF's attention written out ("eager") too: on a CPU in bf16 it beats the fused kernel at short windows, as
    # musetok's `attend` does, so the ratio is taken against whichever HF model is fastest
    for name, model, kw, prefix in (("HF BertForMaskedLM", bert("sdpa"), {"labels": labels}, "encoder.layer."),
                                    ("HF BertForMaskedLM (eager attention)", bert("eager"), {"labels": labels},
                                     "encoder.layer."),
                                    ("HF GPT2LMHeadModel", gpt, {"labels": ids}, "transformer.h.")):
        model.train()
        opt = make_optimizer(model, 1e-4, 0.1)

        def step(model=model, opt=opt, kw=kw):
            with autocast(args):
                out = model(input_ids=ids, **kw)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        runners[name] = (step, block_params(model, (prefix,)))
    return runners


def bench_training(args) -> None:
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    runners = make_runners(args)
    if args.models:
        keep = [m.strip() for m in args.models.split(",")]
        runners = {k: v for k, v in runners.items() if k.startswith("HF") or any(m in k for m in keep)}
    tokens = args.batch * args.seq
    times: dict[str, list[float]] = {k: [] for k in runners}
    for fn, _ in runners.values():  # warm-up
        fn()
        fn()
    for _ in range(args.rounds):
        for name, (fn, _) in runners.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t) / args.steps)
    peak2 = matmul_peak()
    peak = max(peak, peak2)
    print(f"\ntraining dtype: {args.dtype} (autocast for every model)")
    print(f"fp32 matmul peak on {args.threads} threads: {peak / 1e9:.1f} GFLOP/s "
          f"(best of before/after the run)")
    print(f"config: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, seq {args.seq}, "
          f"batch {args.batch}, "
          f"vocab {args.vocab}; median of {args.rounds} rounds x {args.steps} steps\n")
    print(f"{'model':24s} {'ms/step':>9s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'of peak':>8s}")
    results = {}
    for name, (_, n_block) in runners.items():
        s = statistics.median(times[name])
        flops = (6 * n_block + 12 * args.layers * args.seq * args.hidden) * tokens / s
        results[name] = tokens / s
        print(f"{name:24s} {s * 1e3:9.1f} {tokens / s:10.0f} {flops / 1e9:9.1f} {flops / peak:8.1%}")
    hf = [k for k in results if k.startswith("HF")]
    if hf:
        best_hf = max(hf, key=results.get)
        print(f"\nspeed against {best_hf} (the faster HF model), paired per round: median [min - max] of "
              f"{args.rounds} rounds; target >= 1.1x")
        for name in (k for k in results if k.startswith("musetok")):
            ratios = sorted(h / m for h, m in zip(times[best_hf], times[name]))
            print(f"{name}: {statistics.median(ratios):.3f}x [{ratios[0]:.3f} - {ratios[-1]:.3f}]")


def bench_embedding() -> None:
    from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus
    from musetok.embedding import Embedder
    from musetok.prior.builder import bind_to_store
    from musetok.prior.model import Prior
    from musetok.prior.train import PriorRunConfig
    from musetok.shared.config import load_config
    from musetok.tokenizer.builder import build_tokenizer
    from musetok.tokenizer.features import frame_stacker
    from musetok.tokenizer.train import TokenizerRunConfig

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="musetok-bench-"))
    make_demo_corpus(tmp / "audio", DemoCorpusConfig(pieces=24, seconds=20.0))
    tok = build_tokenizer(load_config(TokenizerRunConfig, "small", kind="tokenizer").model).eval()
    cfg = load_config(PriorRunConfig, "small", kind="prior").model
    # the prior only needs the store's metadata: the frames' size when it reads them, and their bands (which a real
    # store takes from its normaliser) for the band convolution
    meta = tok.store_meta(frame_stacker(tok).dim if cfg.reads_frames else 0)
    prior = Prior(replace(bind_to_store(cfg, meta), frame_bands=tok.cfg.mel.n_mels)).eval()
    # as each file is, and brought to one level first (what `level_db: auto` does with a prior that recorded its
    # training audio's level): timed in alternating rounds, the ratio paired per round
    embs = {"as it is": Embedder(tok, prior, level_db=None), "at -16 dBFS": Embedder(tok, prior, level_db=-16.0)}
    files = sorted((tmp / "audio").rglob("*.wav"))
    times: dict[str, list[float]] = {k: [] for k in embs}
    total = 0.0
    for _ in range(3):
        for name, emb in embs.items():
            t = time.time()
            total = 0.0
            for f in files:
                e = emb.embed_file(f)
                total += e.num_frames / e.frame_rate
            times[name].append(time.time() - t)
    print(f"\nembedding (small tokenizer + small prior, audio -> {cfg.input_kind} -> prior, one file at a time, "
          f"{total:.0f} s of audio, median of 3 rounds):")
    for name, ts in times.items():
        print(f"  {name}: {total / statistics.median(ts):.0f}x real time")
    ratios = sorted(a / b for a, b in zip(times["as it is"], times["at -16 dBFS"]))
    print(f"  at one level / as it is, paired per round: {ratios[1]:.3f}x speed [{ratios[0]:.3f} - {ratios[-1]:.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="", help="time only musetok models whose names contain one of these "
                    "comma-separated parts (and the HF models)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: every model under CPU bf16 autocast (fast where the CPU has AMX)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--embedding-only", action="store_true")
    args = ap.parse_args()
    if not args.embedding_only:
        bench_training(args)
    if not args.skip_embedding:
        bench_embedding()


if __name__ == "__main__":
    main()
