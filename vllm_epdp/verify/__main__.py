"""``python -m vllm_epdp.verify [ARGS]``: the same as ``vllm-epdp verify``."""

import sys

from vllm_epdp.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", *sys.argv[1:]]))
