"""LLM providers behind one small interface; ``get_llm()`` picks one from settings."""

from __future__ import annotations

from app.config.settings import Settings, get_settings
from app.tools.llm.base import RoadmapLLM
from app.tools.llm.offline import OfflineLLM
from app.tools.llm.openai_compatible import OpenAICompatibleLLM


def _is_offline(settings: Settings) -> bool:
    """``auto`` uses the OpenAI-compatible API when LLM_API_KEY is set, else the offline provider."""
    return settings.LLM_PROVIDER == "offline" or (
        settings.LLM_PROVIDER == "auto" and not settings.LLM_API_KEY.get_secret_value()
    )


def get_llm(settings: Settings | None = None) -> RoadmapLLM:
    settings = settings or get_settings()
    if _is_offline(settings):
        return OfflineLLM(latency=settings.LLM_OFFLINE_LATENCY)
    return OpenAICompatibleLLM(
        base_url=settings.LLM_BASE_URL,
        model=settings.LLM_MODEL,
        api_key=settings.LLM_API_KEY,
        timeout=settings.LLM_TIMEOUT,
    )


__all__ = ["OfflineLLM", "OpenAICompatibleLLM", "RoadmapLLM", "get_llm"]
