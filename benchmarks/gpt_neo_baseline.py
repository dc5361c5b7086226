"""The honest baseline for the CPU recipe: transformers' GPTNeoForCausalLM trained by Trainer with Trainer's own
defaults, on the same data, tokenizer, context and time budget (BENCHMARKS.md, "A storyteller in 30 CPU-minutes").

    python benchmarks/gpt_neo_baseline.py --output_dir runs/gpt-neo-defaults --tokenizer runs/cpu/tokenizer \
        --train_file ../shared/data/tinystories/train.txt --time_budget 30

What is Trainer's and what is the project's:
- Trainer's defaults for everything it has a default for: AdamW (lr 5e-5, betas 0.9/0.999, no weight decay),
  linear decay without warm-up, batch 8, float32;
- GPT-Neo with the shape of the former CPU preset (hidden 256, 4 layers, 4 heads, MLP 1,024, untied head,
  alternating global/local attention with a window of 256) and 256 positions, the context it trains on;
- the data path and timing of train_hf.py: the same files and held-out split, blocks of 256 tokens, the same
  evaluation code (tinygpt.evaluation) and --time_budget planning (the linear decay ends when training ends, the
  final evaluation and saving inside the budget). The tokenizer is reused from a recipe run, so its ~15 s of
  building are not in this run's clock.
Writes OUTPUT_DIR like train_hf.py (model, tokenizer, training_summary.json, checkpoints' trainer_state.json).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM, HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from tinygpt.budget import process_start_time
from tinygpt.consistency import evaluate_consistency
from tinygpt.data import CausalLMCollator, DataArguments, load_raw_datasets, tokenize_for_training
from tinygpt.summary import RunSummary
from tinygpt.training import ModelArguments, TinyGPTTrainer, _time_budget


@dataclass
class BaselineArguments:
    output_dir: str = field(metadata={"help": "where the model and its logs go"})
    tokenizer: str = field(metadata={"help": "the 8K tokenizer of a recipe run, e.g. runs/cpu/tokenizer"})
    time_budget: float = field(default=30.0, metadata={"help": "minutes for the whole run"})
    seed: int = 42


def main() -> None:
    started = process_start_time()
    parser = HfArgumentParser((BaselineArguments, DataArguments))
    base, data_args = parser.parse_args_into_dataclasses()
    block_size = data_args.block_size = data_args.block_size or 256
    args = TrainingArguments(output_dir=base.output_dir, eval_strategy="steps", eval_steps=0.25, save_strategy="steps",
                             save_steps=0.5, save_total_limit=1, logging_steps=10, use_cpu=True, seed=base.seed,
                             report_to=[])
    args.time_budget = base.time_budget  # what _time_budget reads
    raw = load_raw_datasets(data_args, seed=base.seed)
    tokenizer = AutoTokenizer.from_pretrained(base.tokenizer)
    set_seed(base.seed)
    model = GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=len(tokenizer), max_position_embeddings=block_size, hidden_size=256, num_layers=4,
        num_heads=4, intermediate_size=1024, attention_types=[[["global", "local"], 2]], window_size=256,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False))
    train = tokenize_for_training(raw["train"], tokenizer, block_size)
    validation = raw["validation"]
    budget = _time_budget(args, started, validation, validation)
    trainer = TinyGPTTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                             block_size=block_size, started=started, processing_class=tokenizer,
                             data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[budget])
    budget.progress = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)), None)
    result = trainer.train()
    metrics = trainer.evaluate(validation)
    trainer.save_model(base.output_dir)
    trainer.save_state()
    consistency = evaluate_consistency(model, tokenizer)
    described = ModelArguments(recipe="gpt-neo with Trainer's defaults", model_preset="tinystories-cpu's former shape")
    RunSummary.of_run(sys.argv[1:], described, data_args, args, trainer, result, metrics, started, None, block_size,
                      [], consistency, budget.decision).write(base.output_dir)
    print(f"GPT-Neo with Trainer's defaults: {trainer.state.global_step} steps, validation bits per byte "
          f"{metrics['eval_bits_per_byte']:.4f}, consistency {consistency['accuracy']:.3f}; saved to {Path(base.output_dir)}")


if __name__ == "__main__":
    main()
