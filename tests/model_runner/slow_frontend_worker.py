"""One DP rank of vllm_epdp.verify.offline_process behind a slow offline front-end.

argv: GAP_S SPEC.json
SyncMPClient.add_request waits GAP_S seconds after sending each request, as
LLM.generate() does in effect when preparing a prompt takes time (long or
multimodal prompts are processed one by one between the sends). It makes the
race behind patch 0012 certain instead of likely: the engine steps the first
request of a batch long before the next one arrives, so a round of 1-token
requests is finished by the wave's first DP sync while most of the batch is
still in the front-end. Without the gap, whether the wave ends early depends
on the machine's load (CI once sent the whole batch in time).
"""

import sys
import time


def main(gap_s: float, spec_path: str) -> int:
    # Imported here, not at module level: vLLM starts its engine processes
    # with spawn, which imports this file again as __mp_main__.
    from vllm.v1.engine.core_client import SyncMPClient

    from vllm_epdp.verify import offline_process

    send = SyncMPClient.add_request

    def add_request_then_wait(self, request):
        send(self, request)
        time.sleep(gap_s)

    SyncMPClient.add_request = add_request_then_wait
    return offline_process.main(spec_path)


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), sys.argv[2]))
