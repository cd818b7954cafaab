import pytest

from tests.runner.variants import env_with, overlay_without
from vllm_epdp import overlay


@pytest.fixture(scope="session")
def series_env():
    """Environment importing vLLM with the whole series applied."""
    return env_with(overlay.make_overlay(state="patched"))


@pytest.fixture(scope="session")
def series_without():
    """series_without("0008") -> environment with every patch but 0008."""
    cache: dict[str, dict] = {}

    def make(number: str) -> dict:
        if number not in cache:
            cache[number] = env_with(overlay_without(number))
        return cache[number]

    return make
