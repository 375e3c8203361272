"""Make a random-weight checkpoint in a real model shape, with a small BPE tokenizer.

For GPU hosts without hub access: vLLM loads it like any Hugging Face checkpoint. The model's
`vocab_size` is set to the tokenizer's exact size, otherwise most sampled ids decode to nothing
and every output is an empty string (which would make "same text after wake" checks vacuous).

    python3 bench/make_checkpoint.py OUT_DIR [--shape qwen3-0.6b|...|llama-3.2-1b] [--vocab 4096]

Shapes: Qwen3 0.6B / 1.7B / 4B and a ~2B one (Qwen3 architecture), and Llama 3.2 1B (Llama
architecture: a second model family for the mixed pipeline). The vocabulary is the small
tokenizer's (4096 by default), so the embedding is smaller than the published model's; the
transformer layers have the published shapes.

Needs torch, transformers and tokenizers (not dependencies of vllm-switch itself).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
from pathlib import Path

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, head_dim: Qwen3's published configs
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, 128),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, 128),
    "qwen3-4b": (2560, 9728, 36, 32, 8, 128),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 64),  # LlamaForCausalLM, see make_model
    # ~2.0 B parameters (4 GiB bf16): the size class of the seed's SmolVLM2-2.2B
    "2b": (2048, 8192, 32, 16, 8, 128),
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
_TEXT = (
    "the moon is a rock that circles earth light from sun makes it shine at night tides follow "
    "its pull people walked on it in nineteen sixty nine fun fact about space stars planets "
    "give me tell you what why how when where model switch sleep wake memory fast slow one two "
    "three data cat dog tree river city music paper water fire green blue red house"
)
WORDS = _TEXT.split(" ")


def corpus(seed: int = 0, n: int = 60000) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(n):
        words = [
            rng.choice(WORDS)
            if rng.random() < 0.7
            else "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
            for _ in range(rng.randint(4, 14))
        ]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ",", ""]))
    return lines


def make_tokenizer(out: Path, vocab: int, specials: list[str] = SPECIALS) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out)
    return len(fast)


def make_model(out: Path, shape: str, vocab: int, eos_id: int, pad_id: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    hidden, inter, layers, heads, kv_heads, head_dim = SHAPES[shape]
    llama = shape.startswith("llama")
    config = (LlamaConfig if llama else Qwen3Config)(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        rope_theta=500000.0 if llama else 1000000.0,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = (LlamaForCausalLM if llama else Qwen3ForCausalLM)(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": False})
    )


def main() -> None:
    """Under an exclusive lock on OUT.lock: a second invocation for the same OUT (one begun in
    the background earlier) waits for the first and then finds the checkpoint made."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--tokenizer-only", action="store_true")
    p.add_argument(
        "--tool-tokens",
        action="store_true",
        help="also <tool_call> and </tool_call> as special tokens (vLLM's hermes tool parser "
        "looks them up in the vocabulary)",
    )
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (args.out / "checkpoint.json").exists():
            print((args.out / "checkpoint.json").read_text().strip())  # noqa: T201
            return
        make(args)


def make(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    specials = [*SPECIALS, *TOOL_TOKENS] if args.tool_tokens else SPECIALS
    size = make_tokenizer(args.out, args.vocab, specials)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.out)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    if not args.tokenizer_only:
        make_model(args.out, args.shape, size, eos, pad)
    made = json.dumps({"out": str(args.out), "shape": args.shape, "vocab": size, "eos": eos})
    (args.out / "checkpoint.json").write_text(made + "\n")  # last: the checkpoint is complete
    print(made)  # noqa: T201


if __name__ == "__main__":
    main()
