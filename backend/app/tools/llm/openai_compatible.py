"""An OpenAI-compatible chat-completions client (OpenAI, Azure-compatible gateways, DashScope, vLLM...)."""

from __future__ import annotations

import json

import httpx
from pydantic import SecretStr

from app.tools.llm.base import LLMError
from app.tools.search.base import SearchResult


class OpenAICompatibleLLM:
    name = "openai_compatible"

    def __init__(self, *, base_url: str, model: str, api_key: SecretStr, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model!r})"

    async def _chat(self, system: str, user: str, *, json_mode: bool = False) -> str:
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise LLMError(f"LLM answered HTTP {response.status_code}")
        try:
            return response.json()["choices"][0]["message"]["content"]
        except (KeyError, IndexError, ValueError) as exc:
            raise LLMError(f"unexpected LLM response shape: {exc!r}") from None

    async def plan_concepts(self, topic: str, count: int) -> list[str]:
        text = await self._chat(
            "You plan learning roadmaps. Answer with JSON only.",
            f'List exactly {count} concepts, from first to last, for learning "{topic}". '
            'Answer as {"concepts": ["title", ...]}.',
            json_mode=True,
        )
        try:
            concepts = [str(c).strip() for c in json.loads(text)["concepts"] if str(c).strip()]
        except (ValueError, KeyError, TypeError) as exc:
            raise LLMError(f"LLM plan is not the JSON asked for: {exc!r}") from None
        if not concepts:
            raise LLMError("LLM planned no concepts")
        return concepts[:count]

    async def write_concept(self, topic: str, concept: str, sources: list[SearchResult]) -> str:
        context = "\n".join(f"- {s.title} ({s.url}): {s.snippet}" for s in sources)
        return await self._chat(
            "You write concise, accurate learning material in markdown.",
            f'Roadmap: "{topic}". Write the lesson for the concept "{concept}".\n'
            f"Use these sources where helpful:\n{context or '(none)'}",
        )
