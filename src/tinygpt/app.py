"""Story playground: a Gradio page to write stories with a trained TinyGPT.

    tinygpt app --model runs/cpu                   # http://127.0.0.1:7860
    tinygpt app --model runs/cpu --model runs/8m   # a fixed list: the page offers these two, nothing else
    TINYGPT_MODEL=runs/cpu python app.py           # as a Hugging Face Space runs it

The operator chooses the models (command line or TINYGPT_MODEL, comma-separated for several); they are loaded
once, at start, and the page can only pick among them. Nothing a visitor sends is ever handed to
`from_pretrained`, so a visitor cannot make the server load (or, through `trust_remote_code`, run) anything else.

Self-contained (gradio, torch and transformers only, the models loaded with trust_remote_code because the
operator chose them), so the same file runs as the `app.py` of a Space: `tinygpt space` writes such a folder.
"""

import functools
import json
import os

import gradio as gr
from transformers import AutoModelForCausalLM, AutoTokenizer
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

try:
    from tinygpt.batching import MAX_BATCH, SettingError, Story, StoryBatcher, checked, new_tokens
except ImportError:  # in a Space: `tinygpt space` copies batching.py beside this file
    from batching import MAX_BATCH, SettingError, Story, StoryBatcher, checked, new_tokens

MODEL_ENV = "TINYGPT_MODEL"
MAX_PROMPT_CHARS = 10_000  # far more than any model's positions hold; refused before it is tokenized
SUMMARY_FILE = "training_summary.json"  # written by train_hf.py next to the weights, published with them


def operator_models(models=None) -> list[str]:
    """The operator's choice: the given folder(s)/Hub id(s), else TINYGPT_MODEL (comma-separated)."""
    if models is None:
        models = os.environ.get(MODEL_ENV, "")
    if isinstance(models, str):
        models = models.split(",")
    models = [m.strip() for m in models if m and m.strip()]
    if not models:
        raise ValueError(f"no model to serve: pass --model DIR_OR_HUB_ID or set {MODEL_ENV}")
    return list(dict.fromkeys(models))


def load(model: str):
    """Tokenizer and model of one operator-chosen folder or Hub id."""
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    return tokenizer, AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True).eval()


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise gr.Error("Write a prompt first (for example: Once upon a time)")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt is {len(prompt):,} characters long; this playground takes at most "
                       f"{MAX_PROMPT_CHARS:,}")
    return prompt


def write_story(served: dict, model, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    """Stream a story for the prompt; every bad value becomes a message in the page."""
    if model not in served:  # Gradio's dropdown refuses other values already; this is the server's own check
        raise gr.Error(f"{str(model)[:200]!r} is not a model of this playground; choose one of {list(served)}")
    prompt = _check_prompt(prompt)
    tokenizer, lm, batcher = served[model]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    try:
        max_new_tokens = new_tokens(ids.shape[1], max_new_tokens, lm.config.max_position_embeddings, "Max new tokens")
        settings = {name: checked(name, value, label) for name, value, label in (
            ("temperature", temperature, "Temperature"), ("top_k", top_k, "Top-k"), ("top_p", top_p, "Top-p"),
            ("repetition_penalty", repetition_penalty, "Repetition penalty"))}
        seed = checked("seed", seed, "Seed")
    except SettingError as error:
        raise gr.Error(str(error)) from None
    story = Story(ids[0], settings, seed, max_new_tokens)
    batcher.submit(story)
    try:
        while (text := story.pieces.get()) is not None:
            if isinstance(text, Exception):
                raise gr.Error(f"generation failed: {text}")
            yield prompt + text
    finally:  # Stop pressed or the page closed: the batch drops this story at its next token
        story.stop.set()


def example_prompts(models) -> list[str]:
    """The prompts each model's training sampled its stories for (its training_summary.json, so a visitor can try
    what the run's record shows), in order without repeats; "Once upon a time" for models without a summary."""
    prompts = []
    for model in models:
        path = _summary_file(model)
        if path:
            with open(path, encoding="utf-8") as f:
                prompts += [s["prompt"] for s in json.load(f).get("samples", []) if s.get("prompt")]
    return list(dict.fromkeys(prompts)) or ["Once upon a time"]


def _summary_file(model: str) -> str | None:
    """The path of a model's training summary: in its folder, or fetched from the Hub; None where it has none."""
    if os.path.isdir(model):
        path = os.path.join(model, SUMMARY_FILE)
        return path if os.path.isfile(path) else None
    try:
        return hf_hub_download(model, SUMMARY_FILE)
    except EntryNotFoundError:  # the repository has no such file (remote), or offline and not in the cache (local)
        return None


def sampling_defaults(model) -> dict:
    """The sliders' starting values: the model's generation_config (what training saved), where it samples."""
    config = model.generation_config
    sampled = bool(config.do_sample)
    return {"max_new_tokens": min(config.max_new_tokens or 200, model.config.max_position_embeddings - 8),
            "temperature": config.temperature if sampled and config.temperature else 0.7,
            "top_k": config.top_k if sampled and config.top_k is not None else 50,
            "top_p": config.top_p if sampled and config.top_p else 0.95}


def build_app(models=None, max_batch: int = MAX_BATCH) -> gr.Blocks:
    """The page for the operator's model(s) (see operator_models); all are loaded here, before serving.
    max_batch: the most stories decoded together (1: one visitor at a time)."""
    served = {}
    for name in operator_models(models):
        tokenizer, lm = load(name)
        served[name] = (tokenizer, lm, StoryBatcher(tokenizer, lm, max_batch))
    story = functools.partial(write_story, served)  # the page's inputs are the remaining parameters
    defaults = sampling_defaults(next(iter(served.values()))[1])

    with gr.Blocks(title="TinyGPT story playground") as app:
        gr.Markdown("# TinyGPT story playground\nType the start of a story; the model continues it.")
        with gr.Row():
            with gr.Column(scale=2):
                model_choice = gr.Dropdown(choices=list(served), value=next(iter(served)), label="Model",
                                           interactive=len(served) > 1, allow_custom_value=False)
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Once upon a time", elem_id="prompt",
                                    max_length=MAX_PROMPT_CHARS)
                gr.Examples(example_prompts(served), inputs=prompt, label="Example prompts")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column(scale=1):
                max_new_tokens = gr.Number(value=defaults["max_new_tokens"], label="Max new tokens", precision=0)
                temperature = gr.Slider(0.05, 2.0, value=defaults["temperature"], step=0.05, label="Temperature")
                top_k = gr.Slider(0, 200, value=defaults["top_k"], step=1, label="Top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=defaults["top_p"], step=0.05, label="Top-p")
                repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
                seed = gr.Number(value=0, label="Seed", precision=0)
        output = gr.Textbox(label="Story", lines=14, elem_id="story")
        event = generate.click(story, [model_choice, prompt, max_new_tokens, temperature, top_k, top_p,
                                       repetition_penalty, seed], output, api_name="generate")
        stop.click(None, cancels=[event])
    # Up to max_batch visitors at once hand their stories to the model's batcher, which decodes them together.
    return app.queue(default_concurrency_limit=max_batch)


if __name__ == "__main__":
    build_app().launch(show_error=True)
