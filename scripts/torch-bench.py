#!/usr/bin/env python3
"""The fp16 PyTorch reference for tern's GPU speed figures (BENCHMARKS.md).

A Llama shape with random fp16 weights at batch 1, written with plain PyTorch ops (eager mode, cuBLAS matmuls,
scaled_dot_product_attention): prefill of -p tokens in one forward, and generation of -n tokens one at a time with
a KV cache, each from an empty cache, the sampled token read back every step as an application would. Prints
medians in tokens per second and decode's weight-plus-KV bytes per token times its rate, like `tern bench`.

    python3 scripts/torch-bench.py 7b [-p 512] [-n 128] [-r 5] [-d 4096]

With -d, each test starts from that many positions already in the KV cache (as `tern bench -d`), the tests
named `pp512 @ d4096`, `tg128 @ d4096`.

The shapes are the ones `tern bench --synthetic` builds (model/src/synthetic.rs).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# layers, width, FFN, heads, KV heads, vocabulary, RoPE base
SHAPES = {
    "135m": (30, 576, 1536, 9, 3, 49152, 100000.0),
    "1b": (16, 2048, 8192, 32, 8, 128256, 500000.0),
    "7b": (32, 4096, 11008, 32, 32, 32000, 10000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=SHAPES)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=512)
    ap.add_argument("-n", "--gen-tokens", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("-d", "--depth", type=int, default=0)
    args = ap.parse_args()

    layers, dim, ffn, heads, kv_heads, vocab, base = SHAPES[args.shape]
    hd = dim // heads
    dev, dt = "cuda", torch.float16
    gen = torch.Generator(device=dev).manual_seed(0)

    def w(rows, cols):
        return torch.randn(rows, cols, device=dev, dtype=dt, generator=gen) * 0.02

    ones = torch.ones(dim, device=dev, dtype=dt)
    blocks = [
        dict(q=w(heads * hd, dim), k=w(kv_heads * hd, dim), v=w(kv_heads * hd, dim), o=w(dim, heads * hd),
             gate=w(ffn, dim), up=w(ffn, dim), down=w(dim, ffn))
        for _ in range(layers)
    ]
    embed, head = w(vocab, dim), w(vocab, dim)
    depth = args.depth
    capacity = depth + max(args.prompt_tokens, args.gen_tokens) + 1
    inv_freq = base ** (-torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd)
    angles = torch.arange(capacity, device=dev, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(dt), angles.sin().to(dt)

    def rms(x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt) * ones

    def rope(x, pos0):  # x: [T, heads, hd], halves rotation
        t = x.shape[0]
        c, s = cos[pos0:pos0 + t, None, :], sin[pos0:pos0 + t, None, :]
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat([a * c - b * s, a * s + b * c], dim=-1)

    kc = torch.zeros(layers, capacity, kv_heads, hd, device=dev, dtype=dt)
    vc = torch.zeros_like(kc)

    def forward(ids, pos0):
        t = ids.shape[0]
        x = embed[ids]
        for i, p in enumerate(blocks):
            h = rms(x)
            q = rope((h @ p["q"].T).view(t, heads, hd), pos0)
            k = rope((h @ p["k"].T).view(t, kv_heads, hd), pos0)
            kc[i, pos0:pos0 + t] = k
            vc[i, pos0:pos0 + t] = (h @ p["v"].T).view(t, kv_heads, hd)
            keys = kc[i, : pos0 + t].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
            values = vc[i, : pos0 + t].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
            a = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, is_causal=t > 1 and pos0 == 0)
            x = x + a.transpose(0, 1).reshape(t, dim) @ p["o"].T
            h = rms(x)
            x = x + (F.silu(h @ p["gate"].T) * (h @ p["up"].T)) @ p["down"].T
        return rms(x[-1:]) @ head.T

    def median_rate(tokens, run):
        rates = []
        for rep in range(args.repetitions + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            if rep > 0:
                rates.append(tokens / (time.perf_counter() - start))
        return statistics.median(rates), min(rates), max(rates)

    name = f"torch fp16 {args.shape}"
    at = f" @ d{depth}" if depth else ""
    params = layers * (dim * heads * hd * 2 + dim * kv_heads * hd * 2 + 3 * dim * ffn) + 2 * vocab * dim
    print("| model | backend | test | t/s (median) | spread (min - max) | read GB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        # The context every test starts from, in prompts of up to 512 tokens (later tests overwrite only what
        # comes after it).
        for pos0 in range(0, depth, 512):
            forward(torch.randint(0, vocab, (min(512, depth - pos0),), device=dev, generator=gen), pos0)
        if args.prompt_tokens > 0:
            ids = torch.randint(0, vocab, (args.prompt_tokens,), device=dev, generator=gen)
            m, lo, hi = median_rate(args.prompt_tokens, lambda: forward(ids, depth))
            print(f"| {name} | {torch.cuda.get_device_name()} | pp{args.prompt_tokens}{at} | {m:.2f} | {lo:.2f} - {hi:.2f} | - |")
        if args.gen_tokens > 0:
            def generate():
                tok = torch.zeros(1, dtype=torch.long, device=dev)
                for pos in range(depth, depth + args.gen_tokens):
                    tok = forward(tok, pos).argmax(-1)
                    tok = torch.tensor([tok.item()], device=dev)  # read back each step, as an application does

            m, lo, hi = median_rate(args.gen_tokens, generate)
            # fp16 weights (one embedding row) and the fp16 KV cache of the middle position.
            per_token = 2 * (params - vocab * dim + dim) + 2 * 2 * layers * (depth + args.gen_tokens // 2 + 1) * kv_heads * hd
            print(f"| {name} | {torch.cuda.get_device_name()} | tg{args.gen_tokens}{at} | {m:.2f} | {lo:.2f} - {hi:.2f} | {per_token * m / 1e9:.1f} |")


if __name__ == "__main__":
    main()
