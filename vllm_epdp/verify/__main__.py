"""``python -m vllm_epdp.verify [ARGS]``: the same as ``vllm-epdp verify``."""

import argparse
import sys

from vllm_epdp.errors import EpdpError
from vllm_epdp.verify import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-epdp verify", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EpdpError as exc:
        print(f"vllm-epdp: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
