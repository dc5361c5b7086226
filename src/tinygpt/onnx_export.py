"""TinyGPT as an ONNX decoder with a KV cache, and story generation on onnxruntime (`tinygpt export onnx`).

    tinygpt export onnx --model runs/cpu --out runs/cpu-onnx [--int8]   # onnx/model.onnx, configs, tokenizer
    tinygpt generate --model runs/cpu-onnx "Once upon a time"           # the same stories, on onnxruntime

The exported folder is what transformers.js loads for a GPT-Neo decoder: config.json is the GPT-Neo config of the
same weights (`tinygpt_config_to_gpt_neo`; the two compute the same function), the tokenizer, generation_config.json,
and onnx/model.onnx (onnx/model_quantized.onnx with --int8: onnxruntime's dynamic int8 weight quantization).
The graph, one decoding step:
    inputs  input_ids (B, T), attention_mask (B, P + T), position_ids (B, T),
            past_key_values.{i}.key / .value (B, nh, P_i, hs) for each layer i
    outputs logits (B, T, V), present.{i}.key / .value (B, nh, P_i', hs)
P is the length so far. As in PyTorch, a global layer keeps every key (P_i = P) and a local layer only its
window (P_i <= window_size - 1): its present is the last window_size - 1 keys of past + new. The first step
passes empty pasts (P_i = 0).

Why the step is written out here rather than traced from the model's forward: the model's cache classes track
a local layer's position in Python state that an exported graph cannot carry, so the step takes the cache as
plain tensors and builds each layer's mask from the attention mask alone. It reuses the model's own modules
(projections, norms, MLP, embeddings) and its score scaling; tests hold its logits to 1e-4 of PyTorch's.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .batching import new_tokens, warpers

ONNX_FILE, INT8_FILE = "onnx/model.onnx", "onnx/model_quantized.onnx"


class DecoderStep(nn.Module):
    """One decoding step of a TinyGPTForCausalLM with its cache as explicit tensors (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        config = model.config
        self.window, self.heads, self.head_dim = config.window_size, config.num_attention_heads, config.head_dim
        self.local = [t == "local" for t in config.attention_types]

    def forward(self, input_ids, attention_mask, position_ids, *past):
        base = self.model.model
        hidden = base.embed_tokens(input_ids) + base.embed_positions(position_ids)  # (B, T, C)
        total, T = attention_mask.shape[1], input_ids.shape[1]
        presents = []
        for i, layer in enumerate(base.layers):
            output, key, value = self._attention(layer, layer.attn_norm(hidden), attention_mask, total, T,
                                                 past[2 * i], past[2 * i + 1], self.local[i])
            hidden = hidden + output
            hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
            if self.local[i]:  # a local layer keeps its window only, as DynamicSlidingWindowLayer does
                key, value = key[:, :, -(self.window - 1):], value[:, :, -(self.window - 1):]
            presents += [key, value]
        return (self.model.lm_head(base.norm(hidden)), *presents)

    def _attention(self, layer, x, attention_mask, total, T, past_key, past_value, local: bool):
        attn = layer.attn
        B, _, C = x.shape
        qkv = attn.qkv_proj(x).view(B, T, 3, self.heads, self.head_dim)  # (B, T, 3, nh, hs)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)  # (B, nh, S, hs)
        S = key.shape[2]
        # absolute token indices (padding included, as the model's masks count them) of queries and keys
        q_index = torch.arange(T, device=x.device) + (total - T)  # (T,)
        k_index = torch.arange(S, device=x.device) + (total - S)  # (S,)
        allowed = k_index[None, :] <= q_index[:, None]  # (T, S)
        if local:
            allowed = allowed & (q_index[:, None] - k_index[None, :] < self.window)
        allowed = allowed[None, None] & attention_mask[:, None, None, -S:].bool()  # (B, 1, T, S)
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scaling  # (B, nh, T, S)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        output = torch.matmul(scores.softmax(-1), value).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return attn.out_proj(output), key, value


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    pasts = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    presents = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *pasts], ["logits", *presents]


def export_onnx(model_dir, out_dir, int8: bool = False) -> Path:
    """Write the transformers.js-ready folder (see the module docstring); returns it."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from .convert import tinygpt_config_to_gpt_neo
    from .tokenizer import load_for_model

    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    if model.config.model_type != "tinygpt":
        raise ValueError(f"{model_dir}: a {model.config.model_type} model; tinygpt export onnx exports TinyGPT models")
    tokenizer = load_for_model(model_dir, model.config.max_position_embeddings)  # checked before any work
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    config = model.config
    step = DecoderStep(model)
    B, T, nh, hs = 1, 3, config.num_attention_heads, config.head_dim
    example = (torch.zeros(B, T, dtype=torch.long), torch.ones(B, T + 2, dtype=torch.long),
               torch.arange(2, 2 + T).unsqueeze(0), *[torch.zeros(B, nh, 2, hs) for _ in range(2 * config.num_hidden_layers)])
    inputs, outputs = io_names(config.num_hidden_layers)
    dynamic = {"input_ids": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
               "position_ids": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size", 1: "sequence_length"}}
    for name in inputs[3:]:
        dynamic[name] = {0: "batch_size", 2: "past_sequence_length"}
    for name in outputs[1:]:
        dynamic[name] = {0: "batch_size", 2: "present_sequence_length"}
    with torch.no_grad():
        torch.onnx.export(step, example, str(out / ONNX_FILE), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out / ONNX_FILE), str(out / INT8_FILE), weight_type=QuantType.QInt8)
    neo = tinygpt_config_to_gpt_neo(config)
    neo.use_cache = True
    neo.save_pretrained(out)  # what transformers.js reads: model_type gpt_neo, num_heads, num_layers, hidden_size
    tokenizer.save_pretrained(out)
    generation = model.generation_config if model.generation_config is not None else GenerationConfig()
    generation.save_pretrained(out)
    for name in ("training_summary.json",):
        if (Path(model_dir) / name).is_file():
            shutil.copy(Path(model_dir) / name, out / name)
    return out


class OnnxGenerator:
    """Greedy or sampled generation on onnxruntime with the exported cache (no PyTorch model needed)."""

    def __init__(self, folder, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / (INT8_FILE if int8 else ONNX_FILE)), options,
                                            providers=["CPUExecutionProvider"])
        self.layers = self.config["num_layers"]
        self.heads = self.config["num_heads"]
        self.head_dim = self.config["hidden_size"] // self.heads
        self.positions = self.config["max_position_embeddings"]
        self.inputs, self.outputs = io_names(self.layers)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]):
        """Logits (B, T, V) and the presents; positions count the real tokens, as in PyTorch."""
        positions = np.maximum(attention_mask.cumsum(-1) - 1, 0)[:, -input_ids.shape[1]:]
        feeds = dict(zip(self.inputs, [input_ids, attention_mask, positions, *past]))
        logits, *presents = self.session.run(self.outputs, feeds)
        return logits, presents

    def generate(self, input_ids, max_new_tokens: int = 200, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: int | None = None, seed: int = 0,
                 streamer=None) -> np.ndarray:
        """input_ids (1, T) -> (1, T + new). Stops at eos, at max_new_tokens or at the model's last position."""
        ids = np.asarray(input_ids, dtype=np.int64)
        room = new_tokens(ids.shape[1], None, self.positions)  # the positions the prompt leaves, or refused
        generator = torch.Generator().manual_seed(seed)
        past = [np.zeros((ids.shape[0], self.heads, 0, self.head_dim), np.float32) for _ in range(2 * self.layers)]
        mask = np.ones_like(ids)
        feed = ids
        for _ in range(min(max_new_tokens, room)):
            logits, past = self.step(feed, mask, past)
            token = self._choose(ids, logits[:, -1], do_sample, temperature, top_k, top_p, generator)
            ids = np.concatenate([ids, token[:, None]], axis=1)
            if streamer is not None:
                streamer.put(torch.from_numpy(token[:, None]))
            if eos_token_id is not None and (token == eos_token_id).all():
                break
            feed, mask = token[:, None], np.concatenate([mask, np.ones_like(token[:, None])], axis=1)
        if streamer is not None:
            streamer.end()
        return ids

    @staticmethod
    def _choose(ids, logits, do_sample, temperature, top_k, top_p, generator) -> np.ndarray:
        """Each row's next token: the argmax, or a sample after the package's one set of warpers (transformers'
        own, `tinygpt.batching.warpers`)."""
        scores = torch.from_numpy(logits).float()  # (B, V)
        if not do_sample:
            return scores.argmax(-1).numpy()
        for warper in warpers(dict(temperature=temperature, top_k=top_k, top_p=top_p)):
            scores = warper(torch.from_numpy(ids), scores)
        return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0].numpy()
