# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Offline DP: the front-end tells its engine when a batch is complete.

`LLM.generate()` sends its batch one request at a time while the engine
already steps. Without a DP coordinator, if one step finishes every request
received so far (max_tokens=1), the DP ranks can agree that the wave is over
while the rest of the batch is on its way; those requests then start a wave
on one rank alone, whose forward waits for peers that never step. So the
synchronous client marks the end of each batch with a utility call,
`frontend_batch_added`, sent on the requests' socket after them, and the DP
engine counts a batch still being sent as unfinished.

The client runs here without engine processes: what it sends is recorded.
"""

import queue
from types import SimpleNamespace

import pytest

from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.engine.core_client import SyncMPClient


def _client(monkeypatch, data_parallel: bool) -> tuple[SyncMPClient, list]:
    client = object.__new__(SyncMPClient)
    # What __init__ sets and the send path reads.
    client.is_dp = data_parallel
    client.engines_running = False
    client.batch_open = False
    client.outputs_queue = queue.Queue()
    sent: list = []
    monkeypatch.setattr(
        client,
        "_send_input",
        lambda request_type, request: sent.append(
            (request_type.name, request.request_id)
        ),
    )
    monkeypatch.setattr(
        client, "call_utility", lambda method, *args: sent.append(("UTILITY", method))
    )
    return client, sent


def _generate(client: SyncMPClient, num_requests: int, num_steps: int) -> None:
    """What LLM.generate() does: add the batch, then read outputs."""
    for i in range(num_requests):
        client.add_request(
            SimpleNamespace(request_id=f"req-{i}", prompt_token_ids=None)
        )
    for _ in range(num_steps):
        client.outputs_queue.put(EngineCoreOutputs())
        client.get_output()


def test_offline_dp_batch_end_sent_after_its_requests(monkeypatch):
    client, sent = _client(monkeypatch, data_parallel=True)
    _generate(client, num_requests=3, num_steps=2)
    _generate(client, num_requests=1, num_steps=1)
    assert sent == [
        ("ADD", "req-0"),
        ("ADD", "req-1"),
        ("ADD", "req-2"),
        ("UTILITY", "frontend_batch_added"),
        ("ADD", "req-0"),
        ("UTILITY", "frontend_batch_added"),
    ]


@pytest.mark.parametrize("num_requests", [0, 2])
def test_no_batch_end_without_data_parallel(monkeypatch, num_requests: int):
    client, sent = _client(monkeypatch, data_parallel=False)
    _generate(client, num_requests=num_requests, num_steps=1)
    assert sent == [("ADD", f"req-{i}") for i in range(num_requests)]
