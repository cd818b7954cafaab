"""``python -m vllm_epdp.ledger compare|summary|stalls DIR``: the same as ``vllm-epdp ledger``."""

import sys

from vllm_epdp.ledger.cli import main

sys.exit(main())
