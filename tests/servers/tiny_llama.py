#!/usr/bin/env python3
"""Write a tiny, deterministic, random-weight llama GGUF model for integration tests.

Usage: python tiny_llama.py OUT.gguf      (needs: pip install gguf numpy)

The model is meaningless (random weights) but architecturally valid, so
llama.cpp / llama-cpp-python can load and serve it in well under a second.
Greedy decoding (temperature 0) gives the same output on every run.
"""
import sys

import numpy as np
import gguf

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 2, 64, 4, 2, 128, 512
HEAD_DIM = N_EMBD // N_HEAD

# ---- vocabulary: byte-fallback SentencePiece ("llama") --------------------
# ids 0..2 are <unk>, <s>, </s>; then the 256 byte tokens; then a few pieces.
T = gguf.TokenType
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
pieces = ["▁"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "▁the", "▁a", "▁is", "▁Bob", "▁home", "▁went", "▁who", "▁yes", "▁no", ".", ",", "?", ":"]
tokens += pieces
types += [T.NORMAL] * len(pieces)
# Scores: longer pieces score higher. SPM only merges through pieces that are in
# the vocabulary, so input text mostly becomes "▁", lowercase letters and byte
# tokens; the word pieces mainly show up in the generated output.
scores = [0.0] * 259 + [float(len(p)) for p in pieces]
N_VOCAB = len(tokens)
NORMAL_IDS = np.array([i for i, t in enumerate(types) if t == T.NORMAL])

# Minimal chat template (llama-cpp-python picks it up from tokenizer.chat_template).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                 "{% endfor %}<|assistant|>")


def main(path: str) -> None:
    rng = np.random.default_rng(1234)

    def w(*shape):  # numpy shape is (rows=out, cols=in); gguf stores it reversed
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    ones = lambda: np.ones(N_EMBD, dtype=np.float32)

    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("tiny-llama-test")
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    # hyper-parameters (llama.* keys)
    wr.add_context_length(N_CTX)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(N_VOCAB)
    # tokenizer (tokenizer.ggml.* keys)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_unk_token_id(0)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    wr.add_chat_template(CHAT_TEMPLATE)

    # tensors
    wr.add_tensor("token_embd.weight", w(N_VOCAB, N_EMBD))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        wr.add_tensor(b + "attn_norm.weight", ones())
        wr.add_tensor(b + "attn_q.weight", w(N_HEAD * HEAD_DIM, N_EMBD))
        wr.add_tensor(b + "attn_k.weight", w(N_HEAD_KV * HEAD_DIM, N_EMBD))
        wr.add_tensor(b + "attn_v.weight", w(N_HEAD_KV * HEAD_DIM, N_EMBD))
        wr.add_tensor(b + "attn_output.weight", w(N_EMBD, N_HEAD * HEAD_DIM))
        wr.add_tensor(b + "ffn_norm.weight", ones())
        wr.add_tensor(b + "ffn_gate.weight", w(N_FF, N_EMBD))
        wr.add_tensor(b + "ffn_up.weight", w(N_FF, N_EMBD))
        wr.add_tensor(b + "ffn_down.weight", w(N_EMBD, N_FF))
    wr.add_tensor("output_norm.weight", ones())
    # Output head: only NORMAL pieces get non-zero rows, so greedy decoding
    # emits readable text and never </s> (a completion always runs to max_tokens).
    out = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
    out[NORMAL_IDS] = w(len(NORMAL_IDS), N_EMBD) * 10
    wr.add_tensor("output.weight", out)

    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_llama.py OUT.gguf")
    main(sys.argv[1])
