"""The Hugging Face contract: Auto classes, save/load in fresh processes (with and without tinygpt
importable, via trust_remote_code), pipeline, and Trainer."""

import json

import pytest
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, Trainer, TrainingArguments, pipeline)

from conftest import run_python, saved_model_with_tokenizer, tiny_model
from tinygpt import TinyGPTConfig, TinyGPTForCausalLM, TinyGPTModel

IDS = [[5, 17, 300, 4000, 12, 9, 50000, 7, 7, 1] * 3]  # 30 tokens, past the window of 8

LOAD_AND_RUN = """
import json, torch
from transformers import AutoModelForCausalLM, pipeline
model = AutoModelForCausalLM.from_pretrained({folder!r}, {load_kwargs})
logits = model(torch.tensor({ids})).logits
generator = pipeline("text-generation", model={folder!r}, {load_kwargs})
text = generator("Once upon a time", max_new_tokens=8, do_sample=False)[0]["generated_text"]
print(json.dumps({{"class": type(model).__module__ + "." + type(model).__name__,
                   "logits": logits.tolist(), "text": text}}))
"""


def test_auto_classes_resolve_tinygpt(tmp_path):
    config = AutoConfig.for_model("tinygpt", hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
    assert isinstance(config, TinyGPTConfig)
    assert isinstance(AutoModel.from_config(config), TinyGPTModel)
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(model, TinyGPTForCausalLM)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 8001, (1, 12))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_saved_folder_holds_safetensors_code_and_auto_map(tmp_path):
    saved_model_with_tokenizer(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_tinygpt.py", "modeling_tinygpt.py",
            "tokenizer.json", "generation_config.json"} <= files
    assert not {"pytorch_model.bin"} & files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    # every class, so the folder loads as any of them (a language model fine-tuned into a classifier, ...)
    assert auto_map == {"AutoConfig": "configuration_tinygpt.TinyGPTConfig", "AutoModel": "modeling_tinygpt.TinyGPTModel",
                        "AutoModelForCausalLM": "modeling_tinygpt.TinyGPTForCausalLM",
                        "AutoModelForSequenceClassification": "modeling_tinygpt.TinyGPTForSequenceClassification",
                        "AutoModelForTokenClassification": "modeling_tinygpt.TinyGPTForTokenClassification",
                        "AutoModelForQuestionAnswering": "modeling_tinygpt.TinyGPTForQuestionAnswering"}


def test_fresh_process_without_tinygpt_loads_with_trust_remote_code(tmp_path):
    folder = tmp_path / "model"
    model, tokenizer = saved_model_with_tokenizer(folder)
    code = LOAD_AND_RUN.format(folder=str(folder), load_kwargs="trust_remote_code=True", ids=IDS)
    result = json.loads(run_python(code, block_tinygpt=True, cwd=tmp_path).splitlines()[-1])
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith("TinyGPTForCausalLM")
    torch.testing.assert_close(torch.tensor(result["logits"]), model(torch.tensor(IDS)).logits, rtol=0, atol=1e-6)
    expected = model.generate(**tokenizer("Once upon a time", return_tensors="pt"), max_new_tokens=8,
                              do_sample=False)
    assert result["text"] == tokenizer.decode(expected[0])


def test_fresh_process_with_tinygpt_loads_without_remote_code(tmp_path):
    folder = tmp_path / "model"
    model, _ = saved_model_with_tokenizer(folder)
    code = "import tinygpt\n" + LOAD_AND_RUN.format(folder=str(folder), load_kwargs="", ids=IDS)
    result = json.loads(run_python(code, block_tinygpt=False, cwd=tmp_path).splitlines()[-1])
    assert result["class"] == "tinygpt.modeling_tinygpt.TinyGPTForCausalLM"
    torch.testing.assert_close(torch.tensor(result["logits"]), model(torch.tensor(IDS)).logits, rtol=0, atol=1e-6)


def test_pipeline_in_process(tmp_path):
    _, tokenizer = saved_model_with_tokenizer(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    text = generator("Once upon a time", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(tokenizer(text).input_ids) == 4 + 5


class _Repeats(torch.utils.data.Dataset):
    """A few fixed sequences: a model that trains at all learns them quickly."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 96, (4, 24), generator=generator)

    def __len__(self):
        return 64

    def __getitem__(self, i):
        ids = self.rows[i % 4]
        return {"input_ids": ids, "labels": ids.clone()}


def test_trainer_with_gradient_checkpointing_and_accumulation(tmp_path):
    model = tiny_model(initializer_range=0.02)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, gradient_checkpointing=True, learning_rate=1e-2,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Repeats())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert model.model.gradient_checkpointing
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]  # it learned the four sequences


def test_lora_on_the_output_head_gets_gradients_and_trains():
    """peft's LoRA on `lm_head`: the training loss goes through the adapter (not around it, through the head's
    weight), equals the loss computed from the adapted logits, and training moves the adapter alone."""
    peft = pytest.importorskip("peft")
    no_dropout = dict(resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0)
    model = peft.get_peft_model(tiny_model(initializer_range=0.02, **no_dropout).train(),
                                peft.LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    model.train()
    loss.backward()
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == set(lora)


def test_label_smoothing_gives_transformers_value_on_shifted_labels(tmp_path):
    """label_smoothing_factor: Trainer takes the labels out and smooths the model's logits. It shifts the labels
    only for its own causal-LM classes, so TinyGPTTrainer (train_hf.py's) gives it the shift: the loss is
    transformers' LabelSmoother on the next tokens."""
    from transformers.trainer_pt_utils import LabelSmoother

    from tinygpt.training import TinyGPTTrainer

    model = tiny_model(resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0).train()
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to="none", use_cpu=True)
    trainer = TinyGPTTrainer(model=model, args=args, train_dataset=_Repeats(), block_size=20)
    ids = torch.stack([_Repeats()[i]["input_ids"] for i in range(2)])
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids.clone()})
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = LabelSmoother(epsilon=0.1)({"logits": logits}, ids, shift_labels=True)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad is not None
