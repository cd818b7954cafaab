"""``python -m vllm_epdp.diagnostics.ledger compare|summary|stalls DIR``: the same as ``vllm-epdp ledger``."""

import sys

from vllm_epdp.diagnostics.ledger.cli import main

sys.exit(main())
