"""Read a process's log for a person: the first error in it (usually the root cause), and its last lines."""

from __future__ import annotations

import re
from pathlib import Path

# vLLM prefixes the log lines of its child processes:
# "(EngineCore_DP0 pid=123) ERROR 11-22 08:28:16 [core.py:1512] ..."
_VLLM_PREFIX = re.compile(r"^\([^)]*\) +[A-Z]+ +\d\d-\d\d [\d:]+ \[[^\]]*\] ?")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt))\b(:.*)?$")


def first_error(path: Path) -> str:
    """The first exception (with the frame that raised it) or fatal signal in
    a log: usually the root cause, before the cascade of errors it causes."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    frame = ""
    for i, raw in enumerate(lines):
        line = _VLLM_PREFIX.sub("", raw)
        m = _FRAME.match(line)
        if m:
            frame = f"{Path(m.group(1)).name}:{m.group(2)} in {m.group(3)}"
            continue
        if line.startswith("Fatal Python error:"):
            # faulthandler: the innermost frame follows on the next lines.
            for later in lines[i + 1 : i + 12]:
                m = _FRAME.match(_VLLM_PREFIX.sub("", later))
                if m:
                    return f"{line.strip()} ({Path(m.group(1)).name}:{m.group(2)} in {m.group(3)})"
            return line.strip()
        m = _EXCEPTION.match(line)
        if m and frame:
            return f"{line.strip()} ({frame})"
    return ""


def log_tail(path: Path, lines: int) -> str:
    if lines <= 0:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
