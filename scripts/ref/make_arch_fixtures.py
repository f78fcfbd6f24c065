#!/usr/bin/env python3
"""Tiny random-weight verification models, one per supported architecture,
for tests/test_arch.c (issue 13 item 4).

For each architecture this script
  1. builds a seeded random model from a transformers config (a few layers,
     odd sizes, GQA), with a made-up 160-token vocabulary, and saves it with
     save_pretrained into a temporary directory;
  2. converts it to an all-F32 GGUF, tests/fixtures/arch/<name>.gguf, with
     llama.cpp's convert_hf_to_gguf.py taken from the llama-cpp-python sdist
     pinned below (downloaded with pip into .deps/ when missing; it runs in a
     subprocess with the gguf-py bundled in the same sdist);
  3. runs the transformers reference (float32, eager attention) on a fixed
     96-token sequence and stores token ids, argmax and top-2 margin at every
     position, logits at selected positions, and full post-softmax attention
     rows for every layer and head at selected positions, plus index.json.

The converter patch (the only one): conversion.base.TextModel.get_vocab_base_pre
is replaced by a function returning "default". The original hashes the token
ids a real tokenizer gives for a fixed text and refuses any tokenizer it does
not know; our made-up BPE vocabulary (no merges) is not in its table. Nothing
else of the converter is changed: tokens, token types and special ids are
written by the converter's own gpt2 vocabulary path, every tensor by its own
code. The engine test feeds token ids, so the tokenizer only has to exist.

Reference weights: transformers is asked to load the converted GGUF
(from_pretrained(dir, gguf_file=...)). Config fields its GGUF reader does not
take from the file (llama3 rope_parameters, qwen3 head_dim, gemma3
query_pre_attn_scalar) are passed as overrides, listed per model in
gguf_load_config_overrides. That model is the reference only when its logits
equal those of the original HF model (relative max error <= 1e-5);
otherwise (mistral: transformers' GGUF reader rejects it) the original HF
float32 weights are, and index.json says why (reference_source,
gguf_load_note). Either way the GGUF tensors are checked against the HF
weights with gguf-py (checks.weights), which is also how the q/k row layout
and the norm-weight offset recorded below were established, not assumed.

What the GGUF keys do not say (per-layer kinds, rope style, query scale,
embedding scale, norm convention...) is recorded per model under
"engine_facts", from the llama.cpp source in the same sdist
(src/models/*.cpp, src/llama-model.cpp) and the transformers modeling code.

Usage: .venv/bin/python scripts/ref/make_arch_fixtures.py [--out tests/fixtures/arch]
           [--only llama,qwen3] [--llama-cpp DIR]
Pinned versions: scripts/ref/requirements.txt (+ LLAMA_CPP_PYTHON_SDIST here).
"""
import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

LLAMA_CPP_PYTHON_SDIST = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

SEED = 20261207
N_VOCAB = 160
N_TOKENS = 96
N_DECODE = 6          # the test prefills N_TOKENS - N_DECODE, then decodes these one by one
SLIDING_WINDOW = 16   # gemma3 sliding layers
REL_MATCH = 1e-5      # GGUF-loaded vs original HF logits, to accept the GGUF path


def here_root():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", ".."))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- converter

def converter_main(hf_dir, outfile, llama_dir, model_name):
    """Runs in a subprocess: the bundled gguf-py must win over the installed
    one, and the patch must not leak into this script's own process."""
    sys.path.insert(0, llama_dir)
    sys.path.insert(1, os.path.join(llama_dir, "gguf-py"))
    import conversion.base as cb

    def fixed_pre(self, tokenizer):  # the one patch (see the module docstring)
        return "default"

    cb.TextModel.get_vocab_base_pre = fixed_pre
    import convert_hf_to_gguf as conv
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", outfile, "--outtype", "f32",
                "--model-name", model_name]
    conv.main()


def ensure_llama_cpp(root, given):
    if given:
        return given
    base = os.path.join(root, ".deps", "llama-cpp-python")
    src = os.path.join(base, f"llama_cpp_python-{LLAMA_CPP_PYTHON_SDIST}", "vendor", "llama.cpp")
    if os.path.isfile(os.path.join(src, "convert_hf_to_gguf.py")):
        return src
    os.makedirs(base, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON_SDIST}", "-d", base], check=True)
    tgz = os.path.join(base, f"llama_cpp_python-{LLAMA_CPP_PYTHON_SDIST}.tar.gz")
    if sha256_file(tgz) != LLAMA_CPP_PYTHON_SHA256:
        sys.exit(f"{tgz}: sha256 differs from the pinned one")
    with tarfile.open(tgz) as t:
        t.extractall(base, filter="data")
    return src


def bundled_gguf_version(llama_dir):
    with open(os.path.join(llama_dir, "gguf-py", "pyproject.toml")) as f:
        for line in f:
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    return None


# ---------------------------------------------------------------- models

def arch_specs():
    """name -> (HF config class name, model class name, config kwargs, GGUF
    arch, converter model name, tie). Sizes are odd on purpose (48 wide,
    q width != n_embd where the architecture allows it, GQA groups of 2-4)."""
    common = dict(vocab_size=N_VOCAB, hidden_size=48, intermediate_size=80,
                  max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                  pad_token_id=None)
    return {
        "llama": ("LlamaConfig", "LlamaForCausalLM",
                  dict(common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=12, rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
                  "llama", "tiny-llama"),
        "llama3": ("LlamaConfig", "LlamaForCausalLM",
                   dict(common, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                        head_dim=16, rms_norm_eps=1e-5,
                        # head_dim 16, base 5e5: wavelengths 6.3, 32, 167, 860, ... With an
                        # original context of 256 (high/low wavelength bounds 64 / 256) the
                        # first two frequencies stay, the third is smoothed, the rest / 8.
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 256},
                        tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
                   "llama", "tiny-llama3"),
        # The llama converter writes no sliding-window key (llama.cpp's llama
        # arch has none), so the tiny Mistral has no window, like Mistral 7B
        # v0.2/v0.3; "mistral" as general.name is what makes transformers'
        # GGUF loader build a MistralForCausalLM.
        "mistral": ("MistralConfig", "MistralForCausalLM",
                    dict(common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                         head_dim=16, rms_norm_eps=1e-5, rope_theta=1000000.0,
                         sliding_window=None, tie_word_embeddings=False),
                    "llama", "mistral"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
                  dict(common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
                       tie_word_embeddings=False),
                  "qwen2", "tiny-qwen2"),
        # YaRN, as Qwen 2.5 long-context configs set it: head_dim 12, base 1e4
        # and an original context of 2048 put the correction ramp on pairs
        # 1..4 of 6, so pair 0 keeps its frequency, pair 5 is divided by the
        # factor and the ones between are blended; attention factor
        # 0.1 ln 4 + 1 (no attention_factor given).
        "qwen2-yarn": ("Qwen2Config", "Qwen2ForCausalLM",
                       dict(common, max_position_embeddings=8192, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                             "factor": 4.0,
                                             "original_max_position_embeddings": 2048},
                            use_sliding_window=False, tie_word_embeddings=False),
                       "qwen2", "tiny-qwen2-yarn"),
        # YaRN with every optional key written (betas, attention factor) on a
        # llama file (NORM rope): head_dim 16, ramp on pairs 2..5 of 8.
        "llama-yarn": ("LlamaConfig", "LlamaForCausalLM",
                       dict(common, max_position_embeddings=4096, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            rms_norm_eps=1e-5,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                             "factor": 2.0,
                                             "original_max_position_embeddings": 2048,
                                             "beta_fast": 16.0, "beta_slow": 2.0,
                                             "attention_factor": 1.3},
                            tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
                       "llama", "tiny-llama-yarn"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
                  dict(common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       attention_bias=False, use_sliding_window=False,
                       tie_word_embeddings=True),
                  "qwen3", "tiny-qwen3"),
        # llama.cpp reads no layer pattern for gemma3 unless the GGUF has
        # gemma3.attention.sliding_window_pattern, which the Gemma3 converter
        # does not write: every 6th layer (il % 6 == 5) is global. Six layers
        # is the smallest model with both kinds. query_pre_attn_scalar is not
        # written either: llama.cpp uses 1/sqrt(head_dim) (1/sqrt(n_embd /
        # n_head) only for the 62-layer 27B), so the tiny config sets it to
        # head_dim.
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                   dict(common, intermediate_size=64, num_hidden_layers=6,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                        rms_norm_eps=1e-6, sliding_window=SLIDING_WINDOW,
                        layer_types=["sliding_attention"] * 5 + ["full_attention"],
                        rope_parameters={"full_attention": {"rope_type": "default",
                                                            "rope_theta": 1000000.0},
                                         "sliding_attention": {"rope_type": "default",
                                                               "rope_theta": 10000.0}},
                        query_pre_attn_scalar=32, hidden_activation="gelu_pytorch_tanh",
                        final_logit_softcapping=None, attn_logit_softcapping=None,
                        tie_word_embeddings=True),
                   "gemma3", "tiny-gemma3"),
    }


def randomize(model, name, gen):
    """HF's default init (std 0.02) gives near-uniform attention and logits
    that hardly depend on the input: a weak test. Scale weights so that
    attention is peaked and the residual stream carries the tokens."""
    import torch
    with torch.no_grad():
        for pname, p in model.named_parameters():
            shape = p.shape
            if "norm" in pname:
                # Gemma applies (1 + w); the others multiply by w. QK-norm
                # leaves q and k at unit RMS, so their weights are large to
                # keep attention peaked.
                base = 0.0 if name == "gemma3" else 1.0
                if "q_norm" in pname or "k_norm" in pname:
                    base += 1.5
                p.copy_(base + 0.2 * torch.randn(shape, generator=gen))
            elif pname.endswith("bias"):
                p.copy_(0.5 * torch.randn(shape, generator=gen))
            elif "embed_tokens" in pname or "lm_head" in pname:
                p.copy_(torch.randn(shape, generator=gen))
            else:
                gain = 2.5 if ("q_proj" in pname or "k_proj" in pname) else 1.0
                p.copy_(gain * torch.randn(shape, generator=gen) / math.sqrt(shape[1]))


def write_tokenizer(d):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    # "<|endoftext|>" is in the vocabulary because transformers' Qwen2
    # tokenizer (which AutoTokenizer picks for a qwen2 config whatever
    # tokenizer_config.json says) appends it otherwise, past vocab_size.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 3}
    for i in range(4, N_VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(d)


def fixed_tokens():
    """BOS, a seeded random body with a repeated stretch (so attention has
    something to find far back, beyond gemma3's window), ids in [4, V)."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    body = rng.integers(4, N_VOCAB, size=N_TOKENS - 1)
    body[60:80] = body[10:30]
    return [1] + [int(x) for x in body]


# ---------------------------------------------------------------- checks

def llama_permute(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute, restated: per head, the rows
    of the two rotate_half halves are interleaved into adjacent pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def check_weights(gguf_path, sd, cfg, name):
    """Compare GGUF tensors with the HF state dict; find out (not assume)
    how q/k rows are laid out and whether norm weights carry +1."""
    import gguf
    import numpy as np
    r = gguf.GGUFReader(gguf_path)
    t = {x.name: np.asarray(x.data).reshape([int(v) for v in reversed(x.shape)])
         for x in r.tensors}
    types = sorted({x.tensor_type.name for x in r.tensors})
    hf = {k: v.detach().float().numpy() for k, v in sd.items()}
    out = {"tensor_types": types, "n_tensors": len(t), "tensors": sorted(t.keys())}
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    k = hf["model.layers.0.self_attn.k_proj.weight"]
    gq, gk = t["blk.0.attn_q.weight"], t["blk.0.attn_k.weight"]
    if np.array_equal(gq, q) and np.array_equal(gk, k):
        out["qk_rows"] = "as in HF (rotate_half halves per head: rope NEOX)"
    elif (np.array_equal(gq, llama_permute(q, cfg.num_attention_heads))
          and np.array_equal(gk, llama_permute(k, cfg.num_key_value_heads))):
        out["qk_rows"] = "permuted per head into adjacent pairs (rope NORM, x[2i], x[2i+1])"
    else:
        sys.exit(f"{name}: GGUF attn_q/attn_k match HF neither as is nor permuted")
    n_hf = hf["model.layers.0.input_layernorm.weight"]
    n_g = t["blk.0.attn_norm.weight"]
    if np.array_equal(n_g, n_hf):
        out["norm_offset_added"] = 0.0
    elif np.array_equal(n_g, (n_hf + np.float32(1.0)).astype(np.float32)):
        out["norm_offset_added"] = 1.0
    else:
        sys.exit(f"{name}: GGUF attn_norm is neither w nor w + 1")
    emb = hf["model.embed_tokens.weight"]
    if not np.array_equal(t["token_embd.weight"], emb):
        sys.exit(f"{name}: token_embd differs from embed_tokens")
    out["output_weight"] = "output.weight" in t
    if out["output_weight"] and not np.array_equal(t["output.weight"], hf["lm_head.weight"]):
        sys.exit(f"{name}: output.weight differs from lm_head")
    if "rope_freqs.weight" in t:
        out["rope_freqs"] = [float(x) for x in t["rope_freqs.weight"].reshape(-1)]
    # Every GGUF key except the tokenizer's bulky arrays, for the engine's key reading.
    keys = {}
    for kname, f in r.fields.items():
        if kname.startswith("tokenizer.ggml.") and kname not in (
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        if kname.startswith("GGUF."):
            continue
        try:
            v = f.contents()
        except Exception:  # older gguf-py without contents()
            v = None
        if isinstance(v, float):
            v = float(np.float32(v))
        keys[kname] = v
    out["gguf_keys"] = keys
    return out


# ---------------------------------------------------------------- facts

def engine_facts(name, cfg, checks):
    """What the engine must know that the GGUF keys do not say."""
    L = cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    neox = checks["qk_rows"].startswith("as in HF")
    f = {
        "rope_style": ("neox: rotate (x[i], x[i + head_dim/2]) with the GGUF rows as stored"
                       if neox else "norm: rotate adjacent pairs (x[2i], x[2i+1]) of the GGUF rows"),
        "rope_style_source": "llama.cpp llama_model_rope_type(): LLM_ARCH_LLAMA -> NORM; "
                             "QWEN2, QWEN3, GEMMA3 -> NEOX",
        "head_dim": hd,
        "attn_scale": 1.0 / math.sqrt(hd),
        "embedding_scale": 1.0,
        "norm_weight_in_gguf": "multiply by the stored weight",
        "ffn": "down(silu(gate(x)) * up(x))",
        "qkv_bias": False,
        "qk_norm": None,
        "post_norms": False,
        "tied_output": not checks["output_weight"],
        "final_logit_softcap": None,
        "layer_kinds": ["full"] * L,
        "sliding_window": None,
        "rope_base_per_layer": None,
        "rope_freq_divisors": None,
    }
    theta = cfg.rope_parameters.get("rope_theta") if "full_attention" not in cfg.rope_parameters \
        else cfg.rope_parameters["full_attention"]["rope_theta"]
    f["rope_base_per_layer"] = [float(theta)] * L
    if name == "llama3":
        f["rope_freq_divisors"] = checks.get("rope_freqs")
        f["rope_scaling"] = ("theta_i = pos * base^(-2i/head_dim) / rope_freqs[i] (tensor "
                             "rope_freqs.weight, head_dim/2 floats); no llama.rope.scaling.* keys "
                             "are written for llama3 scaling; no attention factor")
        f["hf_rope_parameters"] = cfg.rope_parameters
    if name.endswith("-yarn"):
        f["rope_scaling"] = ("YaRN: pair i's frequency blends base^(-2i/hd) and base^(-2i/hd) / "
                             "factor along a linear ramp between the floored/ceiled correction "
                             "dims of beta_fast/beta_slow rotations over the original context; "
                             "cos and sin times the attention factor (given, else "
                             "0.1 ln(factor) + 1); keys <arch>.rope.scaling.{type,factor,"
                             "original_context_length,yarn_beta_fast,yarn_beta_slow,"
                             "yarn_attn_factor}")
        f["hf_rope_parameters"] = cfg.rope_parameters
    if name.startswith("qwen2"):
        f["qkv_bias"] = True
        f["qkv_bias_note"] = "attn_q/attn_k/attn_v have .bias tensors (q/k biases added before RoPE); attn_output has none"
    if name == "qwen3":
        f["qk_norm"] = ("RMSNorm over each head's head_dim values of q and k (attn_q_norm/attn_k_norm, "
                        "[head_dim]), eps = rms eps, after the projections and before RoPE")
    if name == "gemma3":
        kinds = ["sliding" if t == "sliding_attention" else "full" for t in cfg.layer_types]
        rp = cfg.rope_parameters
        f.update({
            "layer_kinds": kinds,
            "layer_kinds_rule": "llama.cpp: no sliding_window_pattern key -> pattern 6: layer il is "
                                "sliding iff il % 6 < 5",
            "sliding_window": cfg.sliding_window,
            "sliding_window_rule": "query at position i sees keys j with i - window < j <= i "
                                   "(window keys including itself), in prefill and decode",
            "rope_base_per_layer": [float(rp["sliding_attention" if k == "sliding" else
                                          "full_attention"]["rope_theta"]) for k in kinds],
            "rope_base_rule": "full layers: gemma3.rope.freq_base; sliding layers: "
                              "gemma3.rope.freq_base_swa (llama.cpp default 10000 when absent)",
            "attn_scale": cfg.query_pre_attn_scalar ** -0.5,
            "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
            "attn_scale_rule": "not in the GGUF: llama.cpp uses 1/sqrt(head_dim) "
                               "(1/sqrt(n_embd/n_head) for the 62-layer 27B only)",
            "embedding_scale": float(__import__("numpy").float32(math.sqrt(cfg.hidden_size))),
            "embedding_scale_rule": "token embeddings times sqrt(n_embd) (float32), before layer 0; "
                                    "not applied to the tied output matrix",
            "norm_weight_in_gguf": "the converter stored w + 1: multiply by the stored weight as is",
            "ffn": "down(gelu_tanh(gate(x)) * up(x))",
            "qk_norm": "RMSNorm per head over head_dim (attn_q_norm/attn_k_norm), before RoPE, "
                       "stored +1 like every gemma norm",
            "post_norms": True,
            "layer_order": "h += post_attention_norm(attn(attn_norm(h))); "
                           "h += post_ffw_norm(ffn(ffn_norm(h))) "
                           "(GGUF: attn_norm, post_attention_norm, ffn_norm, post_ffw_norm)",
        })
    return f


# ---------------------------------------------------------------- reference

def run_reference(model, ids):
    import torch
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    logits = out.logits[0].float().numpy()
    attn = [a[0].float().numpy() for a in out.attentions]
    return logits, attn


def make_one(name, spec, args, llama_dir, tmp_root, torch, transformers, np):
    cfg_cls, model_cls, kw, gguf_arch, model_name = spec
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg.architectures = [model_cls]
    gen = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    torch.manual_seed(SEED)
    model = getattr(transformers, model_cls)(cfg)
    randomize(model, name, gen)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    hf_dir = os.path.join(tmp_root, name)
    model.save_pretrained(hf_dir)
    write_tokenizer(hf_dir)

    gguf_name = f"{name}.gguf"
    gguf_path = os.path.join(args.out, gguf_name)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--_convert", hf_dir, gguf_path,
                    llama_dir, model_name], check=True)
    sd = model.state_dict()
    checks = {"weights": check_weights(gguf_path, sd, cfg, name)}
    gk = checks["weights"]["gguf_keys"]
    if gk.get("general.architecture") != gguf_arch:
        sys.exit(f"{name}: GGUF architecture {gk.get('general.architecture')}, want {gguf_arch}")

    ref_model = getattr(transformers, model_cls).from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = fixed_tokens()
    logits_hf, attn_hf = run_reference(ref_model, ids)

    source, note, logits, attn = "hf_weights", None, logits_hf, attn_hf
    overrides = {}
    try:
        # What transformers' GGUF reader gets wrong for this file: config
        # fields that differ from the HF config. They are passed back as
        # overrides, so the weights still come through its GGUF path
        # (dequantize, un-permute q/k, undo Gemma's +1).
        gcfg = transformers.AutoConfig.from_pretrained(args.out, gguf_file=gguf_name)
        overrides = {k: getattr(cfg, k) for k in ("head_dim", "rope_parameters", "layer_types",
                                                  "sliding_window", "query_pre_attn_scalar")
                     if hasattr(cfg, k) and getattr(cfg, k) != getattr(gcfg, k, None)}
        g_model = transformers.AutoModelForCausalLM.from_pretrained(
            args.out, gguf_file=gguf_name, dtype=torch.float32, attn_implementation="eager",
            **overrides).eval()
        lg, at = run_reference(g_model, ids)
        rel = float(np.max(np.abs(lg - logits_hf)) / np.max(np.abs(logits_hf)))
        what = (f"transformers loads the GGUF as {type(g_model).__name__}"
                + (f" with config overrides {sorted(overrides)} (its GGUF reader does not "
                   f"get them from the file)" if overrides else ""))
        if rel <= REL_MATCH:
            source, logits, attn = "gguf", lg, at
            note = f"{what}; logits match the HF model (rel {rel:.2g})"
        else:
            note = f"{what}, but its logits differ from the HF model's by rel {rel:.3g}"
    except Exception as e:  # unsupported architecture in transformers' GGUF loader
        note = f"transformers cannot load this GGUF ({type(e).__name__}: {str(e)[:160]})"
    print(f"{name}: {note}", file=sys.stderr)

    T, V = len(ids), logits.shape[1]
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    argmax = logits.argmax(axis=1).astype(np.int32)
    margin = (top2.max(axis=1) - top2.min(axis=1)).astype(np.float32)
    n_pre = T - N_DECODE
    lpos = sorted({0, 1, SLIDING_WINDOW, T // 3, T // 2, (2 * T) // 3, n_pre - 1}
                  | set(range(n_pre, T)))
    apos = sorted({0, 5, SLIDING_WINDOW - 1, SLIDING_WINDOW, SLIDING_WINDOW + 1, T // 2,
                   n_pre - 1} | set(range(n_pre, T, 2)) | {T - 1})
    rows, entries, off = [], [], 0
    for layer, a in enumerate(attn):
        for h in range(a.shape[0]):
            for p in apos:
                row = a[h, p, : p + 1].astype(np.float32)
                if abs(float(row.sum()) - 1.0) > 1e-4 or np.any(a[h, p, p + 1:] != 0):
                    sys.exit(f"{name}: layer {layer} head {h} pos {p}: not a causal softmax row")
                rows.append(row)
                entries.append({"layer": layer, "head": h, "pos": p, "offset": off})
                off += p + 1
    files = {k: f"{name}.{k}.{ext}" for k, ext in
             (("tokens", "i32"), ("argmax", "i32"), ("margin", "f32"), ("logits", "f32"),
              ("attn", "f32"))}
    np.asarray(ids, dtype="<i4").tofile(os.path.join(args.out, files["tokens"]))
    argmax.astype("<i4").tofile(os.path.join(args.out, files["argmax"]))
    margin.astype("<f4").tofile(os.path.join(args.out, files["margin"]))
    logits[lpos].astype("<f4").tofile(os.path.join(args.out, files["logits"]))
    np.concatenate(rows).astype("<f4").tofile(os.path.join(args.out, files["attn"]))

    # Peakedness, so a reader can tell the test is not comparing uniform rows.
    peak = float(np.mean([r.max() for r in rows if len(r) > 8]))
    cfg_json = json.loads(cfg.to_json_string(use_diff=False))
    for k in ("transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg_json.pop(k, None)
    return {
        "name": name,
        "gguf": gguf_name,
        "gguf_sha256": sha256_file(gguf_path),
        "gguf_bytes": os.path.getsize(gguf_path),
        "gguf_arch": gguf_arch,
        "hf_class": model_cls,
        "hf_config": cfg_json,
        "reference_source": source,
        "gguf_load_note": note,
        "gguf_load_config_overrides": overrides,
        "engine_facts": engine_facts(name, cfg, checks["weights"]),
        "checks": checks,
        "n_tokens": T,
        "n_vocab": V,
        "n_decode": N_DECODE,
        "files": files,
        "logits_pos": lpos,
        "attn_rows": entries,
        "min_margin": float(margin.min()),
        "mean_max_attention": peak,
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_convert":
        converter_main(*sys.argv[2:6])
        return
    root = here_root()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "arch"))
    ap.add_argument("--only", default="", help="comma-separated subset of the architectures")
    ap.add_argument("--llama-cpp", default="", help="llama.cpp source dir with convert_hf_to_gguf.py")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(1)
    llama_dir = ensure_llama_cpp(root, args.llama_cpp)
    os.makedirs(args.out, exist_ok=True)
    specs = arch_specs()
    names = [n for n in specs if not args.only or n in args.only.split(",")]
    idx_path = os.path.join(args.out, "index.json")
    old = {}
    if os.path.isfile(idx_path):
        with open(idx_path) as f:
            old = {m["name"]: m for m in json.load(f).get("models", [])}
    tmp_root = tempfile.mkdtemp(prefix="attnpred-arch-")
    try:
        for n in names:
            old[n] = make_one(n, specs[n], args, llama_dir, tmp_root, torch, transformers, np)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    index = {
        "generator": "scripts/ref/make_arch_fixtures.py",
        "converter": f"llama.cpp convert_hf_to_gguf.py from the llama-cpp-python "
                     f"{LLAMA_CPP_PYTHON_SDIST} sdist (sha256 {LLAMA_CPP_PYTHON_SHA256}), "
                     f"--outtype f32, get_vocab_base_pre patched to 'default'",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf_py_installed": importlib.metadata.version("gguf"),
        "gguf_py_bundled_with_converter": bundled_gguf_version(llama_dir),
        "numpy": np.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "seed": SEED,
        "layout": "tokens/argmax (i32) and margin (f32) at every position; logits (f32) "
                  "[len(logits_pos)][n_vocab]; attn (f32): rows of attn_rows, row i has pos+1 "
                  "post-softmax probabilities (zeros outside a sliding window) at offset",
        "models": [old[n] for n in specs if n in old],
    }
    with open(idx_path, "w") as fo:
        json.dump(index, fo, indent=1)
        fo.write("\n")


if __name__ == "__main__":
    main()
