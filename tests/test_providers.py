"""The real HTTP clients (OpenAI-compatible LLM, Tavily) against a loopback server that speaks the
same protocol, and provider selection by setting. Nothing leaves this machine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from app.config.settings import get_settings
from app.tools.llm import OfflineLLM, OpenAICompatibleLLM, get_llm
from app.tools.llm.base import LLMError
from app.tools.search.base import SearchError, SearchResult
from app.tools.search.tavily import TavilySearch
from app.tools.search.web_search_router import get_search_provider


class Peer:
    """What the loopback server received, and what it should answer next."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: Any = {}
        self.delay = 0.0


@pytest.fixture
def peer() -> Iterator[tuple[Peer, str]]:
    state = Peer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "json": json.loads(self.rfile.read(length)),
                }
            )
            time.sleep(state.delay)
            payload = state.body if isinstance(state.body, bytes) else json.dumps(state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def chat(content: str) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


async def test_llm_client_speaks_chat_completions(peer: tuple[Peer, str]) -> None:
    state, base = peer
    llm = OpenAICompatibleLLM(base_url=f"{base}/v1", model="m-1", api_key=SecretStr("sk-test-123"), timeout=5)
    state.body = chat(json.dumps({"concepts": ["Intro", "Pools", "Budgets"]}))
    assert await llm.plan_concepts("PostgreSQL", 3) == ["Intro", "Pools", "Budgets"]
    request = state.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["json"]["model"] == "m-1" and request["json"]["response_format"] == {"type": "json_object"}

    state.body = chat("# Pools\nText.")
    sources = [SearchResult("Doc", "https://example.invalid/doc", "snippet")]
    assert await llm.write_concept("PostgreSQL", "Pools", sources) == "# Pools\nText."
    assert "https://example.invalid/doc" in state.requests[-1]["json"]["messages"][1]["content"]
    assert "sk-test-123" not in repr(llm)


@pytest.mark.parametrize(
    ("status", "body", "delay", "message"),
    [
        (500, {"error": "boom"}, 0.0, "HTTP 500"),
        (200, {"unexpected": True}, 0.0, "unexpected LLM response shape"),
        (200, chat("not json"), 0.0, "not the JSON asked for"),
        (200, chat(json.dumps({"concepts": []})), 0.0, "planned no concepts"),
        (200, chat("{}"), 1.5, "request failed: ReadTimeout"),
    ],
)
async def test_llm_failures_are_llm_errors(
    peer: tuple[Peer, str], status: int, body: Any, delay: float, message: str
) -> None:
    state, base = peer
    state.status, state.body, state.delay = status, body, delay
    llm = OpenAICompatibleLLM(base_url=base, model="m", api_key=SecretStr("k"), timeout=0.5)
    with pytest.raises(LLMError, match=message):
        await llm.plan_concepts("topic", 3)


async def test_tavily_client(peer: tuple[Peer, str]) -> None:
    state, base = peer
    state.body = {"results": [{"title": "T", "url": "https://e.invalid", "content": "c" * 900}]}
    results = await TavilySearch(base_url=base, timeout=5).search("pooling", "tvly-key", max_results=2)
    assert results == [SearchResult("T", "https://e.invalid", "c" * 500)]
    assert state.requests[-1]["path"] == "/search"
    assert state.requests[-1]["json"] == {"query": "pooling", "max_results": 2, "search_depth": "basic"}
    assert state.requests[-1]["headers"]["Authorization"] == "Bearer tvly-key"
    state.status, state.body = 432, {"detail": "quota"}
    with pytest.raises(SearchError, match="HTTP 432"):
        await TavilySearch(base_url=base, timeout=5).search("q", "k")


def test_providers_are_chosen_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROVIDER", "auto")
    monkeypatch.setenv("LLM_API_KEY", "")
    get_settings.cache_clear()
    assert isinstance(get_llm(), OfflineLLM)  # auto without a key: offline, and it says so
    monkeypatch.setenv("LLM_API_KEY", "sk-live")
    get_settings.cache_clear()
    assert isinstance(get_llm(), OpenAICompatibleLLM)
    monkeypatch.setenv("LLM_PROVIDER", "offline")
    get_settings.cache_clear()
    assert isinstance(get_llm(), OfflineLLM)
    monkeypatch.setenv("SEARCH_PROVIDER", "tavily")
    get_settings.cache_clear()
    assert isinstance(get_search_provider(), TavilySearch)
