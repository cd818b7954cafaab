"""``python -m vllm_epdp ...``: the same as the ``vllm-epdp`` command, for
environments where the console script is not on PATH."""

import sys

from vllm_epdp.cli import main

sys.exit(main())
