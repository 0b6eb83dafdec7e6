"""The script that made edgeqat's embedded default model (kept so the weights can be rebuilt).

The text is the King James Version of the Bible (public domain), read from Debian's ``bible-kjv``
package (``apt-get install bible-kjv``). The book of Proverbs is held out of pretraining: chapters 1-27
become the embedded fine-tuning set and chapters 28-31 the held-out evaluation text, so the default
pipeline fine-tunes on text the model has not seen.

Steps (the third wants a GPU, a few minutes on an H100; everything else runs on a laptop)::

    python train/pretrain_default_model.py corpus  --out .corpus      # needs the `bible` command
    python train/pretrain_default_model.py tokenizer --out .corpus
    python train/pretrain_default_model.py pretrain --out .corpus     # writes .corpus/model
    python train/pretrain_default_model.py package --out .corpus      # copies into core/assets
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

HELD_OUT_BOOK = "Proverbs"
EVAL_FROM_CHAPTER = 28
VOCAB_SIZE = 2048
END_OF_TEXT = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
VERSES_PER_ROW = 5  # fine-tuning rows of a few verses: short enough for a 256-token window
MODEL_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
ASSETS = Path(__file__).resolve().parent.parent / "core" / "assets"


def _chapters(raw: str):
    """Yields (book, chapter, verses) from `bible -l0` output: a 'Book N' line, then '  V verse' lines."""
    book = chapter = None
    verses: list[str] = []
    for line in raw.splitlines():
        header = re.fullmatch(r"(\S.*?) (\d+)", line)
        if header:
            if verses:
                yield book, chapter, verses
            book, chapter, verses = header.group(1), int(header.group(2)), []
        elif line.strip():
            verses.append(re.sub(r"^\s*\d+\s+", "", line).strip())
    if verses:
        yield book, chapter, verses


def build_corpus(out: Path) -> None:
    raw = subprocess.run(["bible", "-l0", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    out.mkdir(parents=True, exist_ok=True)
    pretrain, finetune, heldout = [], [], []
    for book, chapter, verses in _chapters(raw):
        if book != HELD_OUT_BOOK:
            pretrain.append(" ".join(verses))
            continue
        rows = finetune if chapter < EVAL_FROM_CHAPTER else heldout
        rows.extend(" ".join(verses[i : i + VERSES_PER_ROW]) for i in range(0, len(verses), VERSES_PER_ROW))
    (out / "pretrain.txt").write_text("\n".join(pretrain) + "\n")
    for name, rows in (("finetune", finetune), ("heldout", heldout)):
        with open(out / f"{name}.jsonl", "w") as f:
            for text in rows:
                f.write(json.dumps({"text": text}) + "\n")
    print(f"pretrain {len(pretrain)} chapters, finetune {len(finetune)} rows, heldout {len(heldout)} rows")


def train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train([str(out / "pretrain.txt")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, pad_token=END_OF_TEXT)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out / "tokenizer")
    print("tokenizer vocab", tok.get_vocab_size())


def pretrain(out: Path, steps: int, batch: int, seq_len: int, lr: float) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    ids: list[int] = []
    for line in (out / "pretrain.txt").read_text().splitlines():
        ids.extend(tok(line)["input_ids"] + [tok.eos_token_id])
    data = torch.tensor(ids, dtype=torch.long)
    split = int(len(data) * 0.98)
    train_ids, val_ids = data[:split].to(device), data[split:].to(device)
    eval_ids = []
    for line in (out / "heldout.jsonl").read_text().splitlines():
        eval_ids.extend(tok(json.loads(line)["text"])["input_ids"] + [tok.eos_token_id])
    heldout_ids = torch.tensor(eval_ids, device=device)
    print(f"{len(data)} tokens; device {device}")

    model = LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG)).to(device)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    def loss_on(tokens: torch.Tensor) -> float:
        model.eval()
        n = (len(tokens) - 1) // seq_len
        windows = tokens[: n * seq_len].view(n, seq_len)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=windows, labels=windows).loss.item()
        model.train()
        return loss

    start = time.time()
    best_val, best_state = float("inf"), None
    for step in range(steps):
        offsets = torch.randint(0, len(train_ids) - seq_len - 1, (batch,), device=device)
        x = torch.stack([train_ids[o : o + seq_len] for o in offsets])
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            val = loss_on(val_ids)
            print(
                f"step {step} train {loss.item():.3f} val {val:.3f} "
                f"proverbs-heldout {loss_on(heldout_ids):.3f} {time.time() - start:.0f}s",
                flush=True,
            )
            if val < best_val:  # 1 M tokens overfit within a few epochs: keep the best validation point
                best_val, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    print(f"kept the checkpoint with validation loss {best_val:.3f}")
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")


def package(out: Path) -> None:
    """Copies the model (as bf16, to keep the wheel small), tokenizer and data into core/assets."""
    import torch
    from transformers import AutoModelForCausalLM

    dest = ASSETS / "default_model"
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.bfloat16)
    provenance = (dest / "README.md").read_text() if (dest / "README.md").is_file() else None
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(dest, safe_serialization=True)
    if provenance:
        (dest / "README.md").write_text(provenance)
    for f in (out / "model").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, dest / f.name)
    (ASSETS / "data").mkdir(exist_ok=True)
    for name in ("finetune.jsonl", "heldout.jsonl"):
        shutil.copy(out / name, ASSETS / "data" / name)


def build_multiple_choice(heldout: Path, dest: Path, count: int = 60, seed: int = 0) -> None:
    """An lm-eval multiple-choice task from held-out Proverbs: the first half of a verse, which second half?

    The right ending and three endings of other held-out verses; the model picks by log-likelihood.
    """
    import random

    rows = [json.loads(line)["text"] for line in heldout.read_text().splitlines() if line.strip()]
    verses = [v.strip() for r in rows for v in re.split(r"(?<=[.;:?!])\s+", r) if len(v.split()) >= 8]
    endings = [" " + " ".join(v.split()[len(v.split()) // 2 :]) for v in verses]
    rng = random.Random(seed)
    items = []
    for i, verse in enumerate(verses[:count]):
        words = verse.split()
        choices = [endings[i], *rng.sample(endings[:i] + endings[i + 1 :], 3)]
        rng.shuffle(choices)
        items.append({"context": " ".join(words[: len(words) // 2]), "choices": choices, "label": choices.index(endings[i])})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"{len(items)} multiple-choice items -> {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["corpus", "tokenizer", "pretrain", "package", "lm-eval-task"])
    parser.add_argument("--out", type=Path, default=Path(".corpus"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    if args.step == "corpus":
        build_corpus(args.out)
    elif args.step == "tokenizer":
        train_tokenizer(args.out)
    elif args.step == "pretrain":
        pretrain(args.out, args.steps, args.batch, args.seq_len, args.lr)
    elif args.step == "lm-eval-task":
        build_multiple_choice(ASSETS / "data" / "heldout.jsonl", ASSETS / "lm_eval" / "proverbs_mc.jsonl")
    else:
        package(args.out)
        build_multiple_choice(ASSETS / "data" / "heldout.jsonl", ASSETS / "lm_eval" / "proverbs_mc.jsonl")


if __name__ == "__main__":
    main()
