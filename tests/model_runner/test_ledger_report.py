"""Reading a ledger directory: no line is skipped in silence. An unreadable
line is a problem named by file and line (exit 1); the last line of a killed
process, cut short without its newline, is a note and not an error; a
directory without one readable entry is not "agreeing" (exit 1); an entry the
ledger failed to write is a problem. Files written by hand in the ledger's
format (vllm_epdp/diagnostics/ledger/record.py), no ranks needed."""

import json
import subprocess
import sys

from vllm_epdp.diagnostics import ledger


def op(seq: int, member: int, op_name: str = "all_reduce", shape=(2,)) -> str:
    return json.dumps(
        {
            "kind": "op",
            "seq": seq,
            "t": 1.0 + seq,
            "group": "gloo:0,1#0",
            "member": member,
            "layer": "torch",
            "op": op_name,
            "shapes": [list(shape)],
            "dtypes": ["float32"],
        }  # fmt: skip
    )


def write(directory, name: str, lines: list[str], newline_at_end: bool = True) -> None:
    directory.mkdir(exist_ok=True)
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    (directory / name).write_text(text)


def cli(directory) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vllm_epdp.diagnostics.ledger", "compare", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def agreeing(directory) -> None:
    for member in (0, 1):
        write(directory, f"10{member}.jsonl", [json.dumps({"kind": "process", "pid": 100 + member}), op(1, member)])


def test_an_unreadable_line_is_named_by_file_and_line(tmp_path):
    agreeing(tmp_path)
    good = (tmp_path / "101.jsonl").read_text().splitlines()
    write(tmp_path, "101.jsonl", [good[0], '{"kind": "op", "seq": 2, "gro', good[1]])
    report = ledger.compare(tmp_path)
    assert len(report) == 1 and report[0].startswith("101.jsonl line 2: unreadable ledger line"), report
    result = cli(tmp_path)
    assert result.returncode == 1 and "101.jsonl line 2" in result.stdout


def test_a_line_missing_a_field_is_unreadable_too(tmp_path):
    agreeing(tmp_path)
    with open(tmp_path / "100.jsonl", "a") as f:
        f.write(json.dumps({"kind": "op", "seq": 2, "member": 0, "op": "barrier"}) + "\n")
    (problem,) = ledger.compare(tmp_path)
    assert problem.startswith("100.jsonl line 3: unreadable ledger line (KeyError")


def test_the_cut_last_line_of_a_killed_process_is_a_note_not_an_error(tmp_path):
    agreeing(tmp_path)
    with open(tmp_path / "100.jsonl", "a") as f:
        f.write(op(2, 0)[:30])  # killed mid-write: no newline
    assert ledger.compare(tmp_path) == []
    result = cli(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: 100.jsonl line 3: last line cut short (the process was killed while writing it)" in result.stdout
    assert "all members agree" in result.stdout


def test_a_directory_without_a_readable_entry_is_not_agreeing(tmp_path):
    write(tmp_path, "100.jsonl", ["not json at all"])
    result = cli(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "100.jsonl line 1: unreadable ledger line" in result.stdout
    assert "no readable collective entry" in result.stdout
    assert "all members agree" not in result.stdout
    # only process lines (a front-end that posted nothing): nothing to compare either
    only_process = tmp_path / "quiet"
    write(only_process, "100.jsonl", [json.dumps({"kind": "process", "pid": 100})])
    assert any("no readable collective entry" in p for p in ledger.compare(only_process))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty).returncode == 1


def test_an_entry_the_ledger_failed_to_write_is_a_problem(tmp_path):
    agreeing(tmp_path)
    with open(tmp_path / "100.jsonl", "a") as f:
        f.write(json.dumps({"kind": "error", "op": "all_gatherv", "error": "TypeError('x')"}) + "\n")
    (problem,) = ledger.compare(tmp_path)
    assert problem.startswith("100.jsonl line 3: the ledger failed to record a call (all_gatherv: TypeError")
