"""`tinygpt serve MODEL`: transformers' own OpenAI-compatible server (`transformers serve`) with a TinyGPT loaded.

    tinygpt serve runs/cpu --port 8000        # a folder saved by train_hf.py, or a Hub id (USER/NAME)

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="unused")
    client.completions.create(model="runs/cpu", prompt="Once upon a time", max_tokens=100)

The app, its routes, the streaming and the (optional) continuous batching are transformers' (`transformers.cli.
serving`); this module adds what a story model needs on top:
- loading through the Auto classes: transformers' model manager resolves `getattr(transformers,
  config.architectures[0])`, which knows only the classes inside transformers;
- only the operator's model: a request naming another is refused (transformers' pinned-model check), and
  `/load_model` (which loads whatever a client names) and `/reset` (which unloads the model for everyone) are not
  served;
- requests checked against the model before any work: a prompt or `max_tokens` past the model's positions, or a
  negative temperature, is answered 400 with a message naming the problem (transformers would let generate() fail
  deep inside, or silently clamp), and the server goes on serving;
- every other generation route (`/v1/chat/completions`, `/v1/responses`, `/v1/systemone`,
  `/v1/audio/transcriptions`) refused with a 400 that says to use `/v1/completions`: a story model has no chat
  template, no typed decisions and no audio, and transformers' handlers would fail inside with a 500;
- continuous batching on by default: on 2 CPU cores transformers' scheduler serves 16 concurrent requests 4.5-4.8x
  faster than one after another and matches it for a single user (BENCHMARKS.md, "Serving").
"""

from fastapi import HTTPException
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.server import build_server
from transformers.cli.serving.utils import GenerationState


class AutoClassModelManager(ModelManager):
    """transformers' model manager, loading with AutoModelForCausalLM (so tinygpt's registration, or a Hub
    repo's remote code with --trust-remote-code, decides the class)."""

    # transformers has no public hook for the model class its server loads: this overrides the method that
    # resolves it (ModelManager._load_model), keeping its arguments.
    def _load_model(self, model_id_and_revision, tqdm_class=None, progress_callback=None, gguf_file=None):
        from transformers import AutoModelForCausalLM
        from transformers.cli.serving.utils import split_revision

        model_id, revision = split_revision(model_id_and_revision)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, revision=revision, dtype=self.dtype, device_map=self.device,
            trust_remote_code=self.trust_remote_code, attn_implementation=self.attn_implementation,
            tqdm_class=tqdm_class)
        return model.eval()


class StoryCompletionHandler(CompletionHandler):
    """`/v1/completions`, with the request checked against the model first (see the module docstring)."""

    async def handle_request(self, body: dict, request_id: str):
        self._validate_request(body)
        _, model, processor = self._resolve_model(dict(body))  # the pinned-model check, and the model to check
        check_completion_request(body, model.config.max_position_embeddings,
                                 getattr(processor, "tokenizer", processor))
        return await super().handle_request(body, request_id)


def check_completion_request(body: dict, positions: int, tokenizer) -> None:
    """400 for what this model cannot do, each message naming the field, its value and the limit; a missing
    max_tokens becomes the positions the prompt leaves."""
    if body.get("generation_config") is not None:  # it would bypass every check below
        raise HTTPException(status_code=400, detail="generation_config is not accepted here: use max_tokens, "
                            "temperature, top_p and seed")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise HTTPException(status_code=400, detail="prompt must be a string")
    used = len(tokenizer(prompt).input_ids)
    if used >= positions:
        raise HTTPException(status_code=400, detail=f"the prompt is {used} tokens, but the model has "
                            f"{positions} positions: shorten it to at most {positions - 1} tokens")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:  # transformers would ask for 1024 new tokens: the rest of the positions instead
        body["max_tokens"] = positions - used
    else:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise HTTPException(status_code=400, detail=f"max_tokens must be a positive integer, got {max_tokens!r}")
        if used + max_tokens > positions:
            raise HTTPException(status_code=400, detail=f"the prompt ({used} tokens) plus max_tokens "
                                f"({max_tokens}) is past the model's {positions} positions: ask for at most "
                                f"{positions - used} tokens")
    for name, low in (("temperature", 0.0), ("top_p", 0.0)):
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < low):
            raise HTTPException(status_code=400, detail=f"{name} must be a number >= {low}, got {value!r}")
    if body.get("top_p") is not None and body["top_p"] > 1:
        raise HTTPException(status_code=400, detail=f"top_p must be at most 1, got {body['top_p']!r}")


class CompletionsOnly:
    """The handler of a route this server does not serve for a story model: a 400 pointing to /v1/completions."""

    def __init__(self, route: str, why: str):
        self.route, self.why = route, why

    async def handle_request(self, *request, **kwargs):
        raise HTTPException(status_code=400, detail=f"{self.route} is not served: a TinyGPT model tells stories "
                            f"from a prompt and has {self.why}; use /v1/completions")


def build_app(model: str, *, continuous_batching: bool = True, device: str = "auto",
              trust_remote_code: bool = False):
    """The FastAPI app of `transformers serve`, pinned to `model` (loaded now) and with the handlers above."""
    manager = AutoClassModelManager(device=device, dtype="auto", trust_remote_code=trust_remote_code,
                                    continuous_batching=continuous_batching, force_model=model)
    state = GenerationState(continuous_batching=continuous_batching)
    handlers = dict(model_manager=manager, generation_state=state)
    app = build_server(manager, CompletionsOnly("/v1/chat/completions", "no chat template"),
                       completion_handler=StoryCompletionHandler(**handlers),
                       response_handler=CompletionsOnly("/v1/responses", "no chat template"),
                       transcription_handler=CompletionsOnly("/v1/audio/transcriptions", "no audio input"),
                       systemone_handler=CompletionsOnly("/v1/systemone", "no typed-decision head"),
                       generation_state=state)
    app.add_exception_handler(HTTPException, openai_error)
    # The model is pinned (the handlers refuse other names): /load_model would read any folder or Hub id a client
    # names, /reset would unload the model for everyone; neither is a client's to call.
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in ("/load_model", "/reset")]
    return app


async def openai_error(request, error: HTTPException):
    """Errors in OpenAI's shape ({"error": {"message": ...}}), which its clients show to the user, instead of
    FastAPI's {"detail": ...}, which they do not."""
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if 400 <= error.status_code < 500 else "server_error"
    return JSONResponse({"error": {"message": str(error.detail), "type": kind, "param": None,
                                   "code": error.status_code}}, status_code=error.status_code)


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = build_app(model, **options)
    print(f"serving {model} at http://{host}:{port}/v1 (OpenAI completions; the request's model is {model!r})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
