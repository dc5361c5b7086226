"""Task heads (sequence and token classification, question answering): transformers' generic heads on the
TinyGPT body, reached through the Auto classes in process and as remote code, and fine-tuned with Trainer."""

import json
import re

import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, Trainer, TrainingArguments)

from conftest import run_python, tiny_model
from tinygpt import TinyGPTForQuestionAnswering, TinyGPTForSequenceClassification, TinyGPTForTokenClassification
from tinygpt.data import read_stories

HEADS = {AutoModelForSequenceClassification: TinyGPTForSequenceClassification,
         AutoModelForTokenClassification: TinyGPTForTokenClassification,
         AutoModelForQuestionAnswering: TinyGPTForQuestionAnswering}


@pytest.mark.parametrize("auto_class", list(HEADS), ids=lambda c: c.__name__)
def test_heads_load_from_a_language_model_folder(tmp_path, auto_class):
    lm = tiny_model(pad_token_id=0)
    lm.save_pretrained(tmp_path)
    head = auto_class.from_pretrained(tmp_path)
    assert type(head) is HEADS[auto_class]
    for name, weight in lm.model.state_dict().items():  # the body is the language model's, the head is new
        torch.testing.assert_close(head.model.state_dict()[name], weight, rtol=0, atol=0)
    out = head(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]))
    shapes = {k: tuple(v.shape) for k, v in out.items() if torch.is_tensor(v)}
    assert shapes == {AutoModelForSequenceClassification: {"logits": (2, 2)},
                      AutoModelForTokenClassification: {"logits": (2, 4, 2)},
                      AutoModelForQuestionAnswering: {"start_logits": (2, 4), "end_logits": (2, 4)}}[auto_class]


def test_sequence_classifier_reads_the_last_token_that_is_not_padding():
    model = TinyGPTForSequenceClassification(tiny_model(pad_token_id=0).config).eval()
    alone = model(torch.tensor([[5, 6, 7]])).logits
    padded = model(torch.tensor([[5, 6, 7, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)


HAPPY = ("happy", "smile", "smiled", "laughed", "fun", "love", "loved", "glad", "hug")


def ends_happily(story: str) -> int:
    """1 when the story's last sentence has a happy word: a label anyone can check by reading."""
    last = re.split(r"(?<=[.!?])\s+", story.strip())[-1].lower()
    return int(any(re.search(rf"\b{word}\b", last) for word in HAPPY))


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, tokenizer, stories, positions):
        self.rows = [dict(tokenizer(story, truncation=True, max_length=positions), labels=ends_happily(story))
                     for story in stories]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_sequence_classifier_fine_tunes_with_trainer_and_reloads_without_tinygpt(trained, corpus, tmp_path):
    """A user's path: the trained language model becomes a story classifier ("does it end happily") with
    Trainer, is saved, and loads in a process that has only transformers."""
    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForSequenceClassification.from_pretrained(
        trained, num_labels=2, id2label={0: "other", 1: "happy ending"}, label2id={"other": 0, "happy ending": 1})
    stories = read_stories(corpus[0])[:160]
    dataset = _Labelled(tokenizer, stories, model.config.max_position_embeddings)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=40, per_device_train_batch_size=16,
                             learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    before = trainer.evaluate(dataset)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(dataset)["eval_loss"]
    assert after < before - 0.05, (before, after)  # the labels reach the head and the body

    folder = tmp_path / "classifier"
    trainer.save_model(folder)
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "other", "1": "happy ending"}
    texts = [stories[0], stories[1][:80]]
    model.eval()
    with torch.no_grad():
        expected = model(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)).logits
    code = f"""
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
logits = model(**tokenizer({texts!r}, return_tensors="pt", padding=True, truncation=True, max_length=64)).logits
classify = pipeline("text-classification", model={str(folder)!r}, trust_remote_code=True)
label = classify({texts[0]!r}, truncation=True, max_length=64)[0]["label"]
print(json.dumps({{"class": type(model).__name__, "logits": logits.tolist(), "label": label}}))
"""
    result = json.loads(run_python(code, block_tinygpt=True, cwd=tmp_path).splitlines()[-1])
    assert result["class"] == "TinyGPTForSequenceClassification"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert result["label"] == model.config.id2label[int(expected[0].argmax())]
