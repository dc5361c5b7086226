"""Token-matched screening of recipe levers (optimizer, learning rate, batch, shape) before spending 30-minute runs
on them (the S rows of docs/benchmarks-history.md, "The record").

    python benchmarks/recipe_screen.py --tokenizer runs/cpu/tokenizer \
        '[{"name": "adamw_2e-3", "opt": "adamw", "lr": 2e-3}, {"name": "muon_4e-3", "opt": "muon", "lr": 4e-3}]'

Each spec trains a fresh TinyGPT for the same number of tokens (`tokens`, default 1M) on blocks of train.txt in
a fixed random order and reports the loss on the same 160 blocks of valid.txt, so runs differ only in the lever
under test. A bare loop rather than Trainer, on purpose: no evaluation, logging or checkpointing inside the timed
steps, so `tok_s` is the training step's own speed. The optimizers are the recipe's: `MuonWithAdamW` (Muon for the
blocks' 2-D weights, AdamW for the rest) or AdamW alone; weight decay 0.1 on 2-D weights, betas 0.9/0.95, gradient
clipping 1.0, linear warm-up over 5% of the steps, then cosine to zero. Spec keys: name, opt (adamw|muon), lr,
B (batch, 16), T (block, 256), C/L/H (hidden, layers, heads: 256/4/4), tokens, seed, for Muon's own
scaling adjust ("original") with muon_lr, embed_lr_mult and head_lr_mult (AdamW's learning rate for the
embeddings and the output head, as a multiple of lr), zero_init_residual (attention and MLP output projections
start at zero), tied (the output head shares the token embedding), mlp (the MLP's width; default 4 x C). Results go to
OUT/NAME.json (the curve, the final loss, tokens per second); a spec whose result exists is skipped.
"""

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.data import read_stories
from tinygpt.optim import MuonWithAdamW, adamw_groups, muon_parameter_names
from tinygpt.training import zero_init_residual

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories"


def token_blocks(tokenizer, path: Path, block: int) -> torch.Tensor:
    """The file's stories, each followed by <|endoftext|>, concatenated and cut into (N, block) ids."""
    ids = [i for row in tokenizer(list(read_stories(path)), add_special_tokens=False).input_ids
           for i in row + [tokenizer.eos_token_id]]
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def optimizer(model, spec: dict):
    lr, betas = spec.get("lr", 2e-3), (0.9, 0.95)
    args = SimpleNamespace(learning_rate=lr, weight_decay=0.1, embedding_lr_multiplier=spec.get("embed_lr_mult", 1.0),
                           head_lr_multiplier=spec.get("head_lr_mult", 1.0))
    muon = muon_parameter_names(model) if spec.get("opt", "adamw") == "muon" else set()
    groups = adamw_groups(model, args, {n for n, p in model.named_parameters() if p.ndim == 2}, muon)
    if not muon:
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    opt = MuonWithAdamW([p for n, p in model.named_parameters() if n in muon], groups, lr=lr, weight_decay=0.1,
                        betas=betas, adjust_lr_fn=spec.get("adjust", "match_rms_adamw"))
    opt.muon.param_groups[0]["lr"] = spec.get("muon_lr", lr)  # "original" scaling wants Muon's own lr (0.02)
    return opt


def run(spec: dict, train: torch.Tensor, valid: torch.Tensor, vocab: int, eos: int) -> dict:
    torch.manual_seed(spec.get("seed", 0))
    B, T = spec.get("B", 16), spec.get("T", 256)
    config = TinyGPTConfig(vocab_size=vocab, max_position_embeddings=T, hidden_size=spec.get("C", 256),
                           num_hidden_layers=spec.get("L", 4), num_attention_heads=spec.get("H", 4),
                           bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=spec.get("tied", False),
                           intermediate_size=spec.get("mlp"))
    model = TinyGPTForCausalLM(config).train()
    if spec.get("zero_init_residual"):
        zero_init_residual(model)
    opt = optimizer(model, spec)
    steps = spec.get("tokens", 1_000_000) // (B * T)
    warmup = max(1, int(0.05 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))

    def evaluate() -> float:
        model.eval()
        with torch.inference_mode():
            total = sum(model(input_ids=x, labels=x).loss.item() * x.numel() for x in valid.split(32))
        model.train()
        return total / valid.numel()

    order, curve, train_s = [], [], 0.0
    for step in range(steps):
        if not order:  # a new epoch, in an order drawn from the seeded generator after initialisation
            order = torch.randperm(len(train)).tolist()
        x = train[[order.pop() for _ in range(min(B, len(order)))]]
        start = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        train_s += time.perf_counter() - start
        if (step + 1) % max(1, steps // 8) == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "tokens": (step + 1) * B * T, "valid_loss": evaluate(),
                          "train_s": round(train_s)})
            print(json.dumps(curve[-1]), flush=True)
    return {"spec": spec, "curve": curve, "final_valid_loss": curve[-1]["valid_loss"],
            "tok_s": steps * B * T / train_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("specs", help="JSON list of specs")
    parser.add_argument("--tokenizer", required=True, help="a pruned 8K tokenizer folder (any recipe run's)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.txt and valid.txt")
    parser.add_argument("--valid_blocks", type=int, default=160)
    parser.add_argument("--out", type=Path, default=Path("runs/screen"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    for spec in json.loads(args.specs):
        result_file = args.out / f"{spec['name']}.json"
        if result_file.is_file():
            print("done before:", spec["name"])
            continue
        T = spec.get("T", 256)
        train = token_blocks(tokenizer, args.data / "train.txt", T)
        valid = token_blocks(tokenizer, args.data / "valid.txt", T)
        valid = valid[torch.randperm(len(valid), generator=torch.Generator().manual_seed(0))[: args.valid_blocks]]
        result = run(spec, train, valid, len(tokenizer), tokenizer.eos_token_id)
        result_file.write_text(json.dumps(result, indent=1))
        print(f"{spec['name']}: valid loss {result['final_valid_loss']:.4f}, {result['tok_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
