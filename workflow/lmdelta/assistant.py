"""Assistant language models that write text for other stages: prompt proposals, yes/no judgements, labels.

Two backends behind one method, ``complete(messages, seed) -> list[str | None]`` (one reply per
user message, ``None`` where a remote request failed after its retries):

- ``LocalAssistant``: a model of the config, loaded from its materialised folder; the messages go
  through its chat template and are decoded in one seeded batch (``lmdelta.generation``), so a run
  is deterministic for a fixed seed.
- ``HttpAssistant``: any OpenAI-compatible ``/chat/completions`` endpoint. The API key is read from
  the environment variable the config names, sent only in the Authorization header, and never
  logged or written to provenance. Each request has a timeout; timeouts, connection errors, HTTP 429
  and 5xx are retried with growing pauses; a reply that is not the documented JSON counts as failed.
  HTTP 401/403/404 stop the run at once with a one-line error, since retrying cannot fix them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.generation import Sampling, TextFormat, generate_texts, prompt_ids
from lmdelta.models import load_model

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Generation:
    """How the assistant writes: the same keys for both backends."""

    temperature: float | None = 1.0  # None = greedy
    top_p: float = 1.0
    max_new_tokens: int = 160


@dataclass
class HttpAssistant:
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    tries: int = 3
    gen: Generation = field(default_factory=Generation)
    failures: int = 0  # requests that failed after every retry (also counted by callers per cycle)

    @property
    def name(self) -> str:
        return f"http:{self.model}"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "User-Agent": "lmdelta"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LmdeltaError(
                    f"assistant: environment variable {self.api_key_env} (the API key) is not set; "
                    "export it before running, or remove api_key_env for an endpoint without a key"
                )
            h["Authorization"] = f"Bearer {key}"
        return h

    def _request(self, message: str, *, seed: int, gen: Generation) -> str | None:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": gen.max_new_tokens,
            "seed": seed,
        }
        body["temperature"] = 0.0 if gen.temperature is None else gen.temperature
        if gen.top_p < 1.0:
            body["top_p"] = gen.top_p
        url = self.base_url.rstrip("/") + "/chat/completions"
        data = json.dumps(body).encode()
        for attempt in range(1, self.tries + 1):
            req = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                if e.code in (401, 403):
                    raise LmdeltaError(
                        f"assistant: {url} refused the request (HTTP {e.code}); check the API key in "
                        f"${self.api_key_env or '(no api_key_env set)'}"
                    ) from None
                if e.code == 404:
                    raise LmdeltaError(
                        f"assistant: {url} answered HTTP 404; check base_url (it should end before "
                        "/chat/completions, e.g. http://host:8000/v1) and the model name"
                    ) from None
                problem = f"HTTP {e.code}"
                if e.code not in RETRY_STATUS:
                    log.warning("assistant: %s answered %s; request skipped", url, problem)
                    return None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                problem = str(getattr(e, "reason", e))
            else:
                try:
                    return str(json.loads(raw)["choices"][0]["message"]["content"])
                except (ValueError, KeyError, IndexError, TypeError):
                    log.warning(
                        "assistant: %s sent a reply that is not chat-completions JSON; request counted as failed", url
                    )
                    return None
            if attempt < self.tries:
                pause = 0.5 * 2 ** (attempt - 1)
                log.warning(
                    "assistant: request %d/%d failed (%s); retrying in %.1f s", attempt, self.tries, problem, pause
                )
                time.sleep(pause)
            else:
                log.warning("assistant: request failed after %d tries (%s)", self.tries, problem)
        return None

    def complete(
        self, messages: list[str], *, seed: int, gen: Generation | None = None, prefix: str = ""
    ) -> list[str | None]:
        if prefix:
            raise LmdeltaError(
                "assistant: a reply prefix needs a local assistant (chat-completions endpoints cannot continue a reply)"
            )
        out = [self._request(m, seed=seed + i, gen=gen or self.gen) for i, m in enumerate(messages)]
        self.failures += sum(r is None for r in out)
        return out


@dataclass
class LocalAssistant:
    model: Any
    tokenizer: Any
    label: str
    chat_template: bool = True
    fmt: str | None = None
    first_token: str = "bos"
    gen: Generation = field(default_factory=Generation)
    batch_size: int = 8
    failures: int = 0

    @property
    def name(self) -> str:
        return f"local:{self.label}"

    def complete(
        self, messages: list[str], *, seed: int, gen: Generation | None = None, prefix: str = ""
    ) -> list[str | None]:
        """``prefix`` starts each reply (written after the chat template, then continued by the model)."""
        g = gen or self.gen
        fmt = TextFormat(chat_template=self.chat_template, fmt=self.fmt, first_token=self.first_token)
        seqs = [prompt_ids(self.tokenizer, m, fmt, guide=prefix) for m in messages]
        sampling = Sampling(temperature=g.temperature, top_p=g.top_p)
        out = generate_texts(
            self.model,
            self.tokenizer,
            seqs,
            max_new_tokens=g.max_new_tokens,
            sampling=sampling,
            seed=seed,
            batch_size=self.batch_size,
        )
        return [prefix + o["text"] for o in out]


def make_assistant(
    spec: dict[str, Any],
    *,
    model_dir: Path | None = None,
    load_options: dict | None = None,
    fmt: dict | None = None,
    loaded=None,
):
    """An assistant from its config entry: ``{"model": name, ...}`` (needs ``model_dir``) or ``{"http": {...}}``.

    ``loaded`` reuses an already loaded (model, tokenizer) when the assistant is one of the pair.
    """
    gen = Generation(
        temperature=spec.get("temperature", 1.0),
        top_p=spec.get("top_p", 1.0),
        max_new_tokens=spec.get("max_new_tokens", 160),
    )
    if "http" in spec:
        h = spec["http"]
        return HttpAssistant(
            base_url=h["base_url"],
            model=h["model"],
            api_key_env=h.get("api_key_env"),
            timeout_s=h.get("timeout_s", 60.0),
            tries=h.get("tries", 3),
            gen=gen,
        )
    if loaded is None:
        loaded = load_model(model_dir, **(load_options or {}))
    model, tok = loaded
    fmt = fmt or {}
    return LocalAssistant(
        model=model,
        tokenizer=tok,
        label=spec["model"],
        chat_template=fmt.get("chat_template", True),
        fmt=fmt.get("fmt"),
        first_token=fmt.get("first_token", "bos"),
        gen=gen,
        batch_size=spec.get("batch_size", 8),
    )


YES_NO = '{criterion}\n\nText: "{text}"\n\nDoes the text meet this criterion? Answer with one word, yes or no.'


def judge(assistant, texts: list[str], criterion: str, *, seed: int) -> list[bool | None]:
    """A yes/no verdict per text (greedy); ``None`` where the reply says neither or the request failed."""
    gen = Generation(temperature=None, max_new_tokens=4)
    replies = assistant.complete([YES_NO.format(criterion=criterion, text=t) for t in texts], seed=seed, gen=gen)
    out: list[bool | None] = []
    for r in replies:
        word = (r or "").strip().lower().lstrip("\"'*").split()
        first = word[0].strip(".,!:;\"'*") if word else ""
        out.append(True if first == "yes" else False if first == "no" else None)
    return out
