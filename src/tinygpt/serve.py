"""`tinygpt serve MODEL`: an OpenAI-compatible completions server for one story model.

    tinygpt serve runs/cpu --port 8000        # a folder saved by train_hf.py, or a Hub id (USER/NAME)

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="unused")
    client.completions.create(model="runs/cpu", prompt="Once upon a time", max_tokens=100)

A small FastAPI app over the playground's batcher (`tinygpt.batching.StoryBatcher`): the requests that arrive
while a batch decodes form the next batch, one generate() call, each with its own temperature, top_p, seed and
length. It uses only public interfaces (the Auto classes, generate()'s hooks, FastAPI), so it runs on every
transformers release the package supports; transformers' own `transformers serve` is built anew in most releases
and cannot load a model's remote code.

What it serves:
- `POST /v1/completions`, plain or streamed (server-sent events, as the openai client reads them);
- `GET /v1/models` (the one model) and `GET /health`;
- only the operator's model: a request naming another is refused, and nothing a client sends is loaded;
- every request checked against the model before any work: a prompt or `max_tokens` past the model's positions,
  a sampling setting out of range, or an option this server does not implement, is a 400 whose message names the
  field, its value and the limit, and serving goes on;
- the chat and responses routes (and any other under /v1) answer 400 pointing to `/v1/completions`: a story model
  has no chat template.
"""

import asyncio
import json
import secrets
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .batching import SettingError, Story, StoryBatcher, checked, new_tokens

# Requests decoded together: at 16 concurrent clients 16 serves 1.2x the tokens/s of 8 (BENCHMARKS.md, "Serving").
MAX_BATCH = 16
# Options of OpenAI's completions API that this server does not implement: refused by name, never ignored.
UNSUPPORTED = ("echo", "logprobs", "best_of", "suffix", "stop", "logit_bias", "generation_config")


def check_completion_request(body, served: str, positions: int, tokenizer) -> tuple[list[int], dict]:
    """The prompt's ids and the story's settings (max_new_tokens, temperature, top_p, seed); a 400 for what this
    model cannot do, each message naming the field, its value and the limit. A missing max_tokens becomes the
    positions the prompt leaves."""
    def refuse(message):
        raise HTTPException(status_code=400, detail=message)

    if not isinstance(body, dict):
        refuse("the request body must be a JSON object")
    if body.get("model", served) != served:
        refuse(f"this server is pinned to {served!r}; the request names {str(body['model'])[:200]!r}")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False):
            refuse(f"{name} is not supported by this server: use prompt, max_tokens, temperature, top_p and seed")
    if body.get("n", 1) != 1:
        refuse(f"n must be 1 (one story per request), got {body['n']!r}")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0):
            refuse(f"{name} is not supported by this server (0 only), got {body[name]!r}")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        refuse("prompt must be a string")
    ids = tokenizer(prompt).input_ids or [tokenizer.eos_token_id]  # an empty prompt starts a text, as in GPT-2
    try:
        max_tokens = new_tokens(len(ids), body.get("max_tokens"), positions, "max_tokens")
        settings = {name: checked(name, 1.0 if body.get(name) is None else body[name])
                    for name in ("temperature", "top_p")}
        seed = secrets.randbelow(2**63) if body.get("seed") is None else checked("seed", body["seed"])
    except SettingError as error:
        refuse(str(error))
    return ids, dict(max_new_tokens=max_tokens, seed=seed, **settings)


class AsyncPieces:
    """A story's queue as the event loop reads it: the batcher's thread puts, a request's coroutine awaits."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self):
        return await self.queue.get()


def build_app(model: str, *, max_batch: int = MAX_BATCH, device: str = "auto", trust_remote_code: bool = False):
    """The app for `model` (a folder or Hub id, loaded now): the one model its requests may name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code).to(device).eval()
    positions = lm.config.max_position_embeddings
    batcher = StoryBatcher(tokenizer, lm, max_batch)
    app = FastAPI(title=f"TinyGPT: {model}")
    app.add_exception_handler(HTTPException, openai_error)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "tinygpt"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(status_code=400, detail="the request body must be JSON") from None
        ids, settings = check_completion_request(body, model, positions, tokenizer)
        story = Story(torch.tensor(ids), {"temperature": settings["temperature"], "top_p": settings["top_p"]},
                      settings["seed"], settings["max_new_tokens"])
        story.pieces = AsyncPieces(asyncio.get_running_loop())
        batcher.submit(story)
        reply = Completion(model, len(ids), tokenizer)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(reply.stream(story, usage), media_type="text/event-stream")
        try:
            text = await reply.wait(story)
        finally:  # the client went away: the batch drops the story at its next token
            story.stop.set()
        return reply.chunk(text, reply.finish_reason(story), usage=True)

    @app.post("/v1/{route:path}")
    async def other_routes(route: str):
        why = "no chat template" if "chat" in route or "responses" in route else "no such route"
        raise HTTPException(status_code=400, detail=f"/v1/{route} is not served: a TinyGPT model tells stories "
                                                    f"from a prompt and has {why}; use /v1/completions")

    return app


class Completion:
    """One request's answers in OpenAI's `text_completion` shape: whole, or as server-sent events."""

    def __init__(self, model: str, prompt_tokens: int, tokenizer):
        self.model, self.prompt_tokens, self.tokenizer = model, prompt_tokens, tokenizer
        self.id, self.created, self.completion_tokens = f"cmpl-{secrets.token_hex(12)}", int(time.time()), 0

    def chunk(self, text: str | None, finish_reason: str | None, usage: bool) -> dict:
        answer = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                  "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                       "finish_reason": finish_reason}]}
        if usage:
            answer["usage"] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                               "total_tokens": self.prompt_tokens + self.completion_tokens}
        return answer

    @staticmethod
    def finish_reason(story: Story) -> str:
        return "stop" if story.ended_at_eos else "length"

    async def wait(self, story: Story) -> str:
        while (piece := await story.pieces.get()) is not None:
            if isinstance(piece, Exception):
                raise HTTPException(status_code=500, detail=f"generation failed: {piece}")
        self.completion_tokens = len(story.tokens)
        return self.tokenizer.decode(story.tokens, skip_special_tokens=True)

    async def stream(self, story: Story, usage: bool):
        sent = ""
        try:
            while (piece := await story.pieces.get()) is not None:
                if isinstance(piece, Exception):
                    yield _event({"error": {"message": f"generation failed: {piece}", "type": "server_error"}})
                    return
                if len(piece) > len(sent):
                    yield _event(self.chunk(piece[len(sent):], None, usage=False))
                    sent = piece
            self.completion_tokens = len(story.tokens)
            yield _event(self.chunk("", self.finish_reason(story), usage=False))
            if usage:
                yield _event(self.chunk(None, None, usage=True))
            yield "data: [DONE]\n\n"
        finally:  # the client went away: the batch drops the story at its next token
            story.stop.set()


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def openai_error(request, error: HTTPException):
    """Errors in OpenAI's shape ({"error": {"message": ...}}), which its clients show to the user, instead of
    FastAPI's {"detail": ...}, which they do not."""
    kind = "invalid_request_error" if 400 <= error.status_code < 500 else "server_error"
    return JSONResponse({"error": {"message": str(error.detail), "type": kind, "param": None,
                                   "code": error.status_code}}, status_code=error.status_code)


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = build_app(model, **options)
    print(f"serving {model} at http://{host}:{port}/v1 (OpenAI completions; the request's model is {model!r})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
