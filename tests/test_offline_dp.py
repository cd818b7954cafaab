"""The one launcher of offline engines (harness.offline_dp.rank_processes):
which processes it starts and what each one's spec file says. Nothing is run;
verify, the offline fuzz targets and the idle-rank tests run these for real."""

import json

from vllm_epdp.harness.offline_dp import rank_processes
from vllm_epdp.harness.offline_engine import EngineSpec


def engine(launcher: str, dp: int = 2, tp: int = 1) -> EngineSpec:
    return EngineSpec(
        model="m",
        dtype="float32",
        tp=tp,
        dp=dp,
        ep=True,
        launcher=launcher,
        max_model_len=256,
        barrier_dir="b",
        async_scheduling=True,
    )


def spec_of(argv: list[str]) -> dict:
    with open(argv[-1]) as f:
        return json.load(f)


def test_a_process_per_dp_rank_with_vllms_dp_environment(tmp_path):
    specs = rank_processes(engine("mp"), {"out": "o"}, {"A": "1"}, ["-m", "some.module"], tmp_path)
    assert [s.name for s in specs] == ["rank0", "rank1"]
    ports = set()
    for rank, proc in enumerate(specs):
        assert proc.argv[1:3] == ["-m", "some.module"]
        assert proc.env["A"] == "1"
        assert proc.env["VLLM_DP_RANK"] == str(rank) and proc.env["VLLM_DP_SIZE"] == "2"
        ports.add(proc.env["VLLM_DP_MASTER_PORT"])
        spec = spec_of(proc.argv)
        # Every engine field, this rank's DP rank, and the command's own field.
        assert EngineSpec.of(spec) == EngineSpec(**dict(vars(engine("mp")), dp_rank=rank))
        assert spec["out"] == "o"
    assert len(ports) == 1  # one DP master for the whole group


def test_one_rank_gets_no_dp_environment(tmp_path):
    (proc,) = rank_processes(engine("mp", dp=1, tp=2), {}, {}, ["-m", "some.module"], tmp_path)
    assert not any(k.startswith("VLLM_DP_") for k in proc.env)
    assert spec_of(proc.argv)["dp_rank"] == 0


def test_torchrun_runs_every_rank_from_one_spec(tmp_path):
    (proc,) = rank_processes(engine("torchrun", dp=2, tp=2), {}, {}, ["script.py", "0.5"], tmp_path)
    assert "--nproc-per-node=4" in proc.argv
    assert proc.argv[-3:-1] == ["script.py", "0.5"]  # a script and its first arguments, then the spec
    assert spec_of(proc.argv)["dp_rank"] is None  # vLLM takes it from the launcher
