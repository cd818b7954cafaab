import pytest

from vllm_epdp.patching import overlay
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_without


@pytest.fixture(scope="session")
def series_env():
    """Environment importing vLLM with the whole series applied."""
    return env_with(overlay.make_overlay(state="patched"))


@pytest.fixture(scope="session")
def series_without():
    """series_without("0008") -> environment with every patch but 0008;
    series_without("0010", "0013") without both."""
    cache: dict[tuple[str, ...], dict] = {}

    def make(*numbers: str) -> dict:
        if numbers not in cache:
            cache[numbers] = env_with(overlay_without(*numbers))
        return cache[numbers]

    return make
