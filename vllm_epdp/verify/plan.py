"""Which runs verify makes: models, the DP=1 reference per model, and the
target configurations with their scenarios.

Names the user sees (``--list``, ``--scenario``) are ``CONFIG/SCENARIO``, e.g.
``dp2-ep/uneven``. A configuration's engine starts once and runs all of its
selected scenarios; each model's reference runs the union of the scenarios its
targets need.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from vllm_epdp.errors import EpdpError
from vllm_epdp.verify.scenarios import ALL_SCENARIOS

# Order matters inside one engine: the idle-rank scenario goes first so that
# the idle rank has never run a real step when its peer starts working.
SCENARIO_ORDER = ("idle-rank", "even", "uneven", "long", "serve-one", "serve")


@dataclasses.dataclass(frozen=True)
class Model:
    key: str  # "qwen3-moe", "qwen3-next" or "model" for --model
    path: str  # local directory or hub name
    dtype: str
    mode: str  # "exact" (fp32) or "close" (bf16 etc.)
    offline: bool = True  # HF_HUB_OFFLINE=1 (the embedded models are local)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: str  # Model.key
    dp: int
    tp: int
    ep: bool
    launcher: str  # "mp" (one process per DP rank), "torchrun", "serve"
    scenarios: tuple[str, ...]  # run by default
    more: tuple[str, ...] = ()  # added by --all
    reference: bool = False
    runner: str = "auto"  # model runner to run: "v1", "v2" or "auto" (vLLM's own pick)

    @property
    def key(self) -> str:
        """Unique per run: the name, with the runner when one is asked for."""
        return self.name if self.runner == "auto" else f"{self.name}@{self.runner}"

    def describe(self) -> str:
        parts = [f"DP={self.dp}", f"TP={self.tp}"] + (["EP"] if self.ep else [])
        how = {"mp": "offline", "torchrun": "torchrun", "serve": "vllm serve"}[self.launcher]
        return f"{'+'.join(parts)} {how}"


@dataclasses.dataclass
class Plan:
    models: dict[str, Model]
    configs: list[Config]  # references first
    selected: dict[str, list[str]]  # config key -> scenarios to run, ordered

    def runs(self) -> list[tuple[Config, list[str]]]:
        return [(c, self.selected[c.key]) for c in self.configs if self.selected.get(c.key)]

    def listing(self) -> list[str]:
        runners: dict[str, list[str]] = {}
        for c in self.configs:
            runners.setdefault(c.name, []).append(c.runner)
        seen = set()
        entries = []
        for c in self.configs:
            if c.reference or c.name in seen:
                continue
            seen.add(c.name)
            for s in c.scenarios + c.more:
                entries.append((f"{c.name}/{s}", "default" if s in c.scenarios else "--all", c, s))
        width = max((len(e[0]) for e in entries), default=0)
        return [
            f"{name:<{width}}  {mark:<7}  {self.models[c.model].key} {self.models[c.model].dtype}, "
            f"{c.describe()}, runner {'+'.join(runners[c.name])}: {ALL_SCENARIOS[s].summary}"
            for name, mark, c, s in entries
        ]


def embedded_configs() -> list[Config]:
    return [
        Config("ref-moe", "qwen3-moe", 1, 1, False, "mp", (), reference=True),
        Config("ref-next", "qwen3-next", 1, 1, False, "mp", (), reference=True),
        Config("dp2-ep", "qwen3-moe", 2, 1, True, "mp", ("even", "uneven"), ("idle-rank", "long")),
        Config("tp2-ep", "qwen3-moe", 1, 2, True, "mp", ("even", "uneven")),
        Config("next-dp2-ep", "qwen3-next", 2, 1, True, "mp", ("uneven",), ("idle-rank",)),
        Config("serve-dp2-ep", "qwen3-moe", 2, 1, True, "serve", (), ("serve-one", "serve")),
    ]


def user_configs(model_key: str, dp: int, tp: int, launcher: str, ref_tp: int) -> list[Config]:
    target = f"dp{dp}-tp{tp}-ep" + ("-torchrun" if launcher == "torchrun" else "")
    return [
        Config("ref", model_key, 1, ref_tp, False, "mp", (), reference=True),
        Config(target, model_key, dp, tp, True, launcher, ("even", "uneven"), ("idle-rank", "long")),
        Config(f"serve-dp{dp}-tp{tp}-ep", model_key, dp, tp, True, "serve", (), ("serve-one", "serve")),
    ]


def for_runners(configs: list[Config], runners: list[str]) -> list[Config]:
    """Each configuration once per model runner asked for (references too:
    each runner is compared with its own DP=1 run), references first."""
    out = [dataclasses.replace(c, runner=r) for r in runners for c in configs if c.reference]
    return out + [dataclasses.replace(c, runner=r) for r in runners for c in configs if not c.reference]


def select(models: dict[str, Model], configs: list[Config], patterns: list[str], everything: bool) -> Plan:
    """Pick CONFIG/SCENARIO pairs: the defaults, all with ``everything``, or
    those matching any of ``patterns`` (fnmatch on "config/scenario", on the
    config name or on the scenario name), for every runner of ``configs``."""
    selected: dict[str, list[str]] = {}
    matched_patterns = set()
    for c in configs:
        if c.reference:
            continue
        pool = c.scenarios + c.more
        if patterns:
            chosen = []
            for s in pool:
                for p in patterns:
                    if any(fnmatch.fnmatchcase(x, p) for x in (f"{c.name}/{s}", c.name, s)):
                        chosen.append(s)
                        matched_patterns.add(p)
                        break
        else:
            chosen = list(pool if everything else c.scenarios)
        if chosen:
            selected[c.key] = sorted(set(chosen), key=SCENARIO_ORDER.index)
    unknown = [p for p in patterns if p not in matched_patterns]
    if unknown:
        raise EpdpError(f"no scenario matches {', '.join(unknown)}; see `vllm-epdp verify --list`")
    # Each model's reference runs every scenario its selected targets run.
    for c in configs:
        if c.reference:
            need = {
                s
                for t in configs
                if t.model == c.model and t.runner == c.runner and not t.reference
                for s in selected.get(t.key, [])
            }
            if need:
                selected[c.key] = sorted(need, key=SCENARIO_ORDER.index)
    return Plan(models, configs, selected)
