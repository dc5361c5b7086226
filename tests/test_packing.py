"""Packing stories into blocks (tinygpt.data.PackedStories, the one packer): cut once for evaluation and
streaming, packed afresh at every epoch for training, and Trainer drawing each epoch's batches from its own
packing, also when a run resumes within an epoch."""

import random
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer, Trainer, TrainingArguments

from conftest import needs_data, tiny_model
from tinygpt.callbacks import RepackEachEpoch
from tinygpt.data import (CausalLMCollator, DataArguments, PackedStories, load_raw_datasets, pack, story_ids,
                          tokenize_for_training)


def _rows(stories: int = 40, seed: int = 0) -> list[list[int]]:
    """Stories of 1-30 tokens, each ending with the separator 0."""
    draw = random.Random(seed)
    return [[draw.randrange(1, 50) for _ in range(draw.randrange(1, 30))] + [0] for _ in range(stories)]


def test_pack_cuts_the_joined_stream_into_blocks():
    rows = _rows()
    stream = [token for row in rows for token in row]
    assert pack(rows, 16) == [stream[i:i + 16] for i in range(0, len(stream) - 15, 16)]
    assert pack(rows, 16, keep_tail=True) == [stream[i:i + 16] for i in range(0, len(stream), 16)]
    assert pack([], 16) == [] and pack([[1, 2]], 16) == [] and pack([[1, 2]], 16, keep_tail=True) == [[1, 2]]
    assert pack([[1, 2], [], [3, 4, 5]], 2, keep_tail=True) == [[1, 2], [3, 4], [5]]  # an empty row is nothing


def _blocks(packed: PackedStories) -> list[list[int]]:
    return [packed[i]["input_ids"].tolist() for i in range(len(packed))]


def test_each_epoch_packs_the_stories_afresh_in_an_order_drawn_from_the_seed():
    rows = _rows(200)
    packed = PackedStories.of_rows(rows, 16, seed=7)  # with a seed, as tokenize_for_training gives for training
    first = _blocks(packed)
    assert first == pack(rows, 16)  # epoch 0 keeps the dataset's order
    seen = [first]
    for epoch in (1, 2):
        packed.set_epoch(epoch)
        blocks = _blocks(packed)
        assert len(blocks) == len(first) and {len(block) for block in blocks} == {16}
        assert sorted(packed.order.tolist()) == list(range(200)) and blocks not in seen
        # the blocks are the stories joined whole in the epoch's order, then cut
        assert blocks == pack([rows[i] for i in packed.order], 16)
        seen.append(blocks)
    for seed, same in ((7, True), (8, False)):  # every process of a launcher draws the same order
        again = PackedStories.of_rows(rows, 16, seed=seed)
        again.set_epoch(2)
        assert (_blocks(again) == seen[2]) is same
    packed.set_epoch(0)
    assert _blocks(packed) == first
    with pytest.raises(IndexError):
        packed[len(packed)]


@needs_data
def test_training_rows_are_the_tokenized_stories_packed_afresh(corpus, tokenizer_dir):
    train, valid = corpus
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = load_raw_datasets(DataArguments(train_file=[str(train)], validation_file=[str(valid)]))
    packed = tokenize_for_training(raw["train"], tokenizer, block_size=64, seed=3)
    stories = story_ids(tokenizer, raw["train"]["text"])
    assert isinstance(packed, PackedStories) and _blocks(packed) == pack(stories, 64)
    packed.set_epoch(1)
    assert _blocks(packed) == pack([stories[i] for i in packed.order], 64) != pack(stories, 64)
    assert CausalLMCollator(tokenizer.pad_token_id)([packed[0], packed[1]])["input_ids"].tolist() == _blocks(packed)[:2]


def test_the_epoch_told_is_the_one_that_begins_also_within_a_resumed_epoch():
    told = []
    callback = RepackEachEpoch(SimpleNamespace(set_epoch=told.append))
    for epoch in (0, 1.0, 2.37, 2 + 300 / 300, 0.1 * 3 * 10):  # the last two as Trainer's floats compute them
        callback.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
    assert told == [0, 1, 2, 3, 3]


class _RecordingTrainer(Trainer):
    """Trainer, keeping the rows of every batch it trains on (in the main process, where data-loader workers
    send their batches)."""

    rows: list

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.rows.extend(inputs["input_ids"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


@pytest.mark.parametrize("workers", [{}, {"dataloader_num_workers": 1, "dataloader_persistent_workers": True}],
                         ids=["in-process", "persistent-worker"])
def test_trainer_draws_each_epoch_from_that_epochs_packing(tmp_path, workers):
    """Also from a persistent data-loader worker, whose copy of the dataset was made in the first epoch."""
    packed = PackedStories.of_rows(_rows(60), 16, seed=5)
    packings = []
    for epoch in range(3):
        packed.set_epoch(epoch)
        packings.append(_blocks(packed))
    packed.set_epoch(0)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                             learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", seed=0, **workers)
    model = tiny_model(vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=0)
    trainer = _RecordingTrainer(model=model, args=args, train_dataset=packed, callbacks=[RepackEachEpoch(packed)],
                                data_collator=CausalLMCollator(pad_token_id=0))
    trainer.rows = []
    trainer.train()
    per_epoch = len(packed)
    assert len(trainer.rows) == 3 * per_epoch
    for epoch in range(3):
        drawn = trainer.rows[epoch * per_epoch:(epoch + 1) * per_epoch]
        assert sorted(drawn) == sorted(packings[epoch])  # each epoch, every block of its own packing once


def test_story_positions_start_again_after_every_separator():
    import torch

    from tinygpt.data import story_positions

    ids = torch.tensor([[4, 5, 0, 6, 7, 8, 0, 0, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert story_positions(ids, 0).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 0, 1, 2, 3, 4, 5, 6, 7]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_stories_apart_a_packed_block_reads_each_story_as_if_alone(attention):
    """Each story of the block, from its first token to its separator, gets the logits it gets alone, across the
    local layers' window too; the story cut at the block's end as well. Without stories_apart the second story
    reads the first."""
    import torch

    model = tiny_model(eos_token_id=0, use_cache=False)
    model.set_attn_implementation(attention)
    stories = [row for row in _rows(12, seed=1) if len(row) > 10][:3]  # separators 0, lengths 11-30
    block = [token for row in stories for token in row][:64]
    batch = CausalLMCollator(pad_token_id=0, stories_apart=True)([{"input_ids": block}, {"input_ids": block}])
    assert CausalLMCollator(pad_token_id=0)([{"input_ids": block}]).keys() == {"input_ids", "labels"}
    with torch.no_grad():
        apart = model(**batch).logits[1]
        together = model(input_ids=batch["input_ids"]).logits[1]
        start = 0
        for row in stories:
            piece = block[start:start + len(row)]
            if not piece:
                break
            alone = model(input_ids=torch.tensor([piece])).logits[0]
            torch.testing.assert_close(apart[start:start + len(piece)], alone, atol=1e-5, rtol=1e-5)
            if start:
                assert not torch.allclose(together[start:start + len(piece)], alone, atol=1e-3)
            start += len(piece)
