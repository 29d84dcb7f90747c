"""A local OpenAI-compatible chat-completions server, so labeling runs offline.

``POST /v1/chat/completions`` (standard fields: ``messages``, ``max_tokens`` /
``max_completion_tokens``, ``temperature`` (0: greedy), ``top_p``, ``seed``,
``stop``, ``logprobs``, ``top_logprobs``) and ``GET /v1/models``, on the
stdlib ``ThreadingHTTPServer``. The model (by default the packaged
SmolLM2-135M-Instruct) is a transformers causal LM; the conversation goes
through the tokenizer's chat template and ``generate``. Every torch call runs
on one worker thread, so generations happen one at a time: correct, not fast. torch and
transformers are imported when the server starts, not when the module is imported.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
MAX_TOP_LOGPROBS = 20
MAX_BODY_BYTES = 16 << 20
ROLES = ("system", "developer", "user", "assistant")


class RequestError(Exception):
    """A request the server answers with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"messages[{index}] needs a role in {ROLES}", f"messages[{index}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        if not isinstance(content, str):
            raise RequestError(
                400, f"messages[{index}].content must be a string", f"messages[{index}].content"
            )
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": content})
    return messages


def _number(request: dict, name: str, default: Any, kind: type, low: float, high: float) -> Any:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(400, f"{name} must be a number in [{low}, {high}]", name)
    return kind(value)


def parse_request(request: Any) -> dict[str, Any]:
    """The generation settings of a chat-completions request body."""
    if not isinstance(request, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if request.get("stream"):
        raise RequestError(400, "streaming is not supported by this server", "stream")
    if request.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported", "n")
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    max_tokens = _number(
        {"max_tokens": max_tokens}, "max_tokens", DEFAULT_MAX_TOKENS, int, 1, MAX_TOKENS_LIMIT
    )
    logprobs = bool(request.get("logprobs", False))
    top = _number(request, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise RequestError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    stop = request.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise RequestError(400, "stop must be a string or a list of strings", "stop")
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "seed must be an integer", "seed")
    return {
        "messages": _messages(request.get("messages")),
        "max_tokens": max_tokens,
        "temperature": _number(request, "temperature", 1.0, float, 0.0, 2.0),
        "top_p": _number(request, "top_p", 1.0, float, 0.0, 1.0),
        "logprobs": logprobs,
        "top_logprobs": top,
        "stop": stop or [],
        "seed": seed,
    }


class LocalChatModel:
    """A causal LM answering chat requests, on one dedicated worker thread."""

    def __init__(self, model_ref: str = "smollm2", *, device: str | None = None):
        self.model_ref = model_ref
        self.name = Path(model_ref).name if os.sep in model_ref else model_ref
        self._device = device
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="judge-model"
        )
        self._executor.submit(self._load).result()

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from moerm.models.backbones import resolve

        hf_logging.disable_progress_bar()
        path = str(resolve(self.model_ref))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos_ids = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is not None:
                self.eos_ids.update(source if isinstance(source, list) else [source])

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def chat(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Generate for settings from :func:`parse_request`: {text,
        finish_reason, prompt_tokens, completion_tokens, logprobs}."""
        return self._executor.submit(self._chat, settings).result()

    def _chat(self, settings: dict[str, Any]) -> dict[str, Any]:
        import torch

        tokenizer, model = self.tokenizer, self.model
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(
                settings["messages"], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in settings["messages"]) + "assistant:"
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        input_ids = encoded["input_ids"].to(self.device)
        prompt_tokens = int(input_ids.shape[1])
        if prompt_tokens + settings["max_tokens"] > self.max_context:
            raise RequestError(
                400,
                f"this model's context is {self.max_context} tokens; the messages take {prompt_tokens} "
                f"and max_tokens asks for {settings['max_tokens']} more",
                "messages",
                "context_length_exceeded",
            )
        sample = settings["temperature"] > 0
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            options.update(temperature=settings["temperature"], top_p=settings["top_p"])
            if settings["seed"] is not None:
                torch.manual_seed(settings["seed"])
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=encoded["attention_mask"].to(self.device),
                max_new_tokens=settings["max_tokens"],
                output_logits=settings["logprobs"],
                return_dict_in_generate=True,
                pad_token_id=pad,
                **options,
            )
        generated = out.sequences[0, prompt_tokens:].tolist()
        finish_reason = "length"
        if generated and generated[-1] in self.eos_ids:
            generated = generated[:-1]
            finish_reason = "stop"
        text = tokenizer.decode(generated, skip_special_tokens=True)
        for stop in settings["stop"]:
            if stop in text:
                text = text[: text.index(stop)]
                finish_reason = "stop"
        logprobs = None
        if settings["logprobs"]:
            content = []
            for step, token_id in enumerate(generated):
                row = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = self._token_entry(token_id, float(row[token_id]))
                top_values, top_ids = (
                    torch.topk(row, settings["top_logprobs"]) if settings["top_logprobs"] else ([], [])
                )
                entry["top_logprobs"] = [
                    self._token_entry(int(i), float(v)) for v, i in zip(top_values, top_ids, strict=True)
                ]
                content.append(entry)
            logprobs = {"content": content}
        return {
            "text": text,
            "finish_reason": finish_reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": int(out.sequences.shape[1]) - prompt_tokens,  # the end token included
            "logprobs": logprobs,
        }

    def _token_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        token = self.tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def completion_response(model_name: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["text"]},
                "logprobs": result["logprobs"],
                "finish_reason": result["finish_reason"],
            }
        ],
        "usage": {
            "prompt_tokens": result["prompt_tokens"],
            "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server: JudgeHTTPServer
    server_version = "moerm-judge/0.1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self._path()
        if path in ("/v1/models", "/models"):
            self._send(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "moerm"}
                    ],
                },
            )
        elif path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        else:
            self._send(404, RequestError(404, f"no route {self.path}").body())

    def do_POST(self) -> None:  # noqa: N802
        if self._path() not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, RequestError(404, f"no route {self.path}").body())
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise RequestError(413, "request body too large")
            try:
                request = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "the request body is not JSON") from None
            result = self.server.chat_model.chat(parse_request(request))
            self._send(200, completion_response(self.server.model_name, result))
        except RequestError as error:
            self._send(error.status, error.body())
        except Exception as error:  # the model failed: answer, log, keep serving
            log.exception("chat completion failed")
            self._send(500, RequestError(500, f"{type(error).__name__}: {error}").body())


class JudgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat_model: LocalChatModel, model_name: str | None = None):
        super().__init__(address, _Handler)
        self.chat_model = chat_model
        self.model_name = model_name or chat_model.name


class LocalJudgeServer:
    """The server on a background thread (port 0: any free port) for a
    ``with`` block; ``base_url`` (``http://host:port/v1``) is what
    :class:`~moerm.judges.openai_judge.OpenAIJudge` takes. The model loads on
    ``__enter__``."""

    def __init__(
        self,
        model_ref: str = "smollm2",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        device: str | None = None,
        chat_model: LocalChatModel | None = None,
    ):
        self.model_ref = model_ref
        self.host = host
        self.port = port
        self._device = device
        self._chat_model = chat_model
        self._owns_model = chat_model is None
        self._server: JudgeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def model_name(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.model_name

    def start(self) -> LocalJudgeServer:
        if self._chat_model is None:
            self._chat_model = LocalChatModel(self.model_ref, device=self._device)
        self._server = JudgeHTTPServer((self.host, self.port), self._chat_model)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="judge-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._owns_model and self._chat_model is not None:
            self._chat_model.close()
            self._chat_model = None

    def __enter__(self) -> LocalJudgeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    model_ref: str = "smollm2", host: str = "127.0.0.1", port: int = 8000, *, device: str | None = None
) -> None:
    """Run the server in the foreground until interrupted."""
    chat_model = LocalChatModel(model_ref, device=device)
    server = JudgeHTTPServer((host, port), chat_model)
    bound_host, bound_port = server.server_address[:2]
    print(f"serving {server.model_name} at http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        chat_model.close()
