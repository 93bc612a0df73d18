#!/usr/bin/env python3
"""Writes a tiny random-weight F32 GGUF of one architecture, runnable by llama.cpp and exo-p2p.

    tiny-gguf.py ARCH OUT.gguf --tokenizer MODEL.gguf [--seed N]

ARCH is one of: qwen3 (dense, per-head q/k norms, head_dim != hidden/heads, tied embeddings),
qwen3moe (4 experts, top 2, 3-D ffn_*_exps), mixtral (GGUF `llama` with llama.expert_count),
gpt-oss (biases on attention, router and experts, attention sinks, a sliding window on even
layers, YaRN rope, post_attention_norm before the experts; quantized to MXFP4 experts).

The tokenizer is a test model's (qwen2.5-coder-0.5b: gpt2 BPE, qwen2 pre-tokenizer) cut to its
first VOCAB-1 tokens and the merges among them, plus an end-of-text control token, so that the
embedding and output tables stay small. Weights are uniform noise scaled by 1/sqrt(fan_in) from a
seeded generator: the same arguments write the same bytes. Quantized files are made from this one
with llama-quantize (scripts/tiny-fixtures.sh).

Needs the `gguf` and `numpy` packages (scripts/tiny-fixtures.sh makes a venv with them).
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, TokenType

VOCAB = 1024
HIDDEN = 256
LAYERS = 2
CONTEXT = 256
EMBD_GAIN = 0.1  # tied qwen3: embeddings at a tenth of unit scale
OUT_GAIN = 3.0  # and a final norm that scales the logits back up

# Per architecture: GGUF arch name, heads, kv heads, head dim, dense ffn, experts, used, expert ffn.
ARCHS = {
    "qwen3": dict(gguf="qwen3", heads=8, kv=2, head_dim=64, ffn=256, experts=0),
    "qwen3moe": dict(gguf="qwen3moe", heads=4, kv=2, head_dim=64, ffn=0, experts=4, used=2, expert_ffn=128),
    "mixtral": dict(gguf="llama", heads=4, kv=2, head_dim=64, ffn=0, experts=4, used=2, expert_ffn=128),
    "gpt-oss": dict(gguf="gpt-oss", heads=4, kv=2, head_dim=64, ffn=0, experts=4, used=2, expert_ffn=128),
}
# gpt-oss: a window shorter than the prompts of the perplexity run, YaRN from a short context.
GPT_OSS_WINDOW = 16
GPT_OSS_YARN = (4.0, 64)  # factor, original context


def tokenizer(path):
    """The first VOCAB-1 tokens of `path`'s BPE vocabulary, the merges that stay inside them, and
    an end-of-text token."""
    r = GGUFReader(path)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()[: VOCAB - 1]
    kept = set(tokens)
    merges = [m for m in f["tokenizer.ggml.merges"].contents()
              if all(p in kept for p in m.split(" ")) and m.replace(" ", "") in kept]
    tokens.append("<|endoftext|>")
    types = [TokenType.NORMAL] * (VOCAB - 1) + [TokenType.CONTROL]
    return tokens, types, merges, f["tokenizer.ggml.pre"].contents()


def gpt_oss_layer(w, p, c, mat, norm, bias, rng):
    """One gpt-oss layer: llama.cpp's `LLM_ARCH_OPENAI_MOE` tensors."""
    q_dim, kv_dim = c["heads"] * c["head_dim"], c["kv"] * c["head_dim"]
    e, f = c["experts"], c["expert_ffn"]
    w.add_tensor(f"{p}.attn_norm.weight", norm(HIDDEN))
    for name, rows in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
        w.add_tensor(f"{p}.{name}.weight", mat(rows, HIDDEN))
        w.add_tensor(f"{p}.{name}.bias", bias(rows))
    w.add_tensor(f"{p}.attn_output.weight", mat(HIDDEN, q_dim))
    w.add_tensor(f"{p}.attn_output.bias", bias(HIDDEN))
    # Sinks around the scores' scale: some heads give the sink much weight, some little.
    w.add_tensor(f"{p}.attn_sinks.weight", rng.uniform(-1.0, 3.0, c["heads"]).astype(np.float32))
    w.add_tensor(f"{p}.post_attention_norm.weight", norm(HIDDEN))
    w.add_tensor(f"{p}.ffn_gate_inp.weight", mat(e, HIDDEN, gain=4.0))
    w.add_tensor(f"{p}.ffn_gate_inp.bias", bias(e, gain=0.5))
    w.add_tensor(f"{p}.ffn_gate_exps.weight", np.stack([mat(f, HIDDEN) for _ in range(e)]))
    w.add_tensor(f"{p}.ffn_gate_exps.bias", bias(e, f))
    w.add_tensor(f"{p}.ffn_up_exps.weight", np.stack([mat(f, HIDDEN) for _ in range(e)]))
    w.add_tensor(f"{p}.ffn_up_exps.bias", bias(e, f))
    w.add_tensor(f"{p}.ffn_down_exps.weight", np.stack([mat(HIDDEN, f) for _ in range(e)]))
    w.add_tensor(f"{p}.ffn_down_exps.bias", bias(e, HIDDEN))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="a GGUF whose tokenizer to copy (qwen2.5-coder-0.5b)")
    ap.add_argument("--seed", type=int, default=14)
    a = ap.parse_args()
    c = ARCHS[a.arch]
    arch = c["gguf"]
    rng = np.random.default_rng(a.seed)

    def mat(rows, cols, gain=1.0):
        return (rng.uniform(-1, 1, (rows, cols)) * gain * np.sqrt(3.0 / cols)).astype(np.float32)

    def norm(n):
        return (1.0 + rng.uniform(-0.2, 0.2, n)).astype(np.float32)

    w = GGUFWriter(a.out, arch)
    w.add_name(f"tiny-{a.arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(10000.0)
    if a.arch == "gpt-oss":
        from gguf import RopeScalingType
        w.add_sliding_window(GPT_OSS_WINDOW)
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(GPT_OSS_YARN[0])
        w.add_rope_scaling_orig_ctx_len(GPT_OSS_YARN[1])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)  # all F32
    if c["experts"]:
        w.add_feed_forward_length(c["expert_ffn"])
        w.add_expert_feed_forward_length(c["expert_ffn"])
        w.add_expert_count(c["experts"])
        w.add_expert_used_count(c["used"])
    else:
        w.add_feed_forward_length(c["ffn"])

    tokens, types, merges, pre = tokenizer(a.tokenizer)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(VOCAB - 1)
    w.add_eos_token_id(VOCAB - 1)
    w.add_pad_token_id(VOCAB - 1)
    w.add_add_bos_token(False)

    q_dim, kv_dim = c["heads"] * c["head_dim"], c["kv"] * c["head_dim"]
    # qwen3's output is the embedding (tied): small embeddings keep each position's logits from
    # being mostly the input token's own, so the continuations are not one token repeated.
    tied = a.arch == "qwen3"
    w.add_tensor("token_embd.weight", mat(VOCAB, HIDDEN, gain=np.sqrt(HIDDEN) * (EMBD_GAIN if tied else 1.0)))
    oss = a.arch == "gpt-oss"

    def bias(*shape, gain=0.1):
        return (rng.uniform(-1, 1, shape) * gain).astype(np.float32)

    for il in range(LAYERS):
        p = f"blk.{il}"
        if oss:
            gpt_oss_layer(w, p, c, mat, norm, bias, rng)
            continue
        w.add_tensor(f"{p}.attn_norm.weight", norm(HIDDEN))
        w.add_tensor(f"{p}.attn_q.weight", mat(q_dim, HIDDEN))
        w.add_tensor(f"{p}.attn_k.weight", mat(kv_dim, HIDDEN))
        w.add_tensor(f"{p}.attn_v.weight", mat(kv_dim, HIDDEN))
        if a.arch != "mixtral":
            w.add_tensor(f"{p}.attn_q_norm.weight", norm(c["head_dim"]))
            w.add_tensor(f"{p}.attn_k_norm.weight", norm(c["head_dim"]))
        w.add_tensor(f"{p}.attn_output.weight", mat(HIDDEN, q_dim))
        w.add_tensor(f"{p}.ffn_norm.weight", norm(HIDDEN))
        if c["experts"]:
            e, f = c["experts"], c["expert_ffn"]
            # A router with a clear preference per token, as trained ones have.
            w.add_tensor(f"{p}.ffn_gate_inp.weight", mat(e, HIDDEN, gain=4.0))
            w.add_tensor(f"{p}.ffn_gate_exps.weight", np.stack([mat(f, HIDDEN) for _ in range(e)]))
            w.add_tensor(f"{p}.ffn_up_exps.weight", np.stack([mat(f, HIDDEN) for _ in range(e)]))
            w.add_tensor(f"{p}.ffn_down_exps.weight", np.stack([mat(HIDDEN, f) for _ in range(e)]))
        else:
            w.add_tensor(f"{p}.ffn_gate.weight", mat(c["ffn"], HIDDEN))
            w.add_tensor(f"{p}.ffn_up.weight", mat(c["ffn"], HIDDEN))
            w.add_tensor(f"{p}.ffn_down.weight", mat(HIDDEN, c["ffn"]))
    w.add_tensor("output_norm.weight", norm(HIDDEN) * (OUT_GAIN if tied else 1.0))
    if not tied:
        w.add_tensor("output.weight", mat(VOCAB, HIDDEN, gain=2.0))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out} ({a.arch}, {len(tokens)} tokens, {len(merges)} merges)", file=sys.stderr)


if __name__ == "__main__":
    main()
