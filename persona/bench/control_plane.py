"""The control-plane bench: cases as data, run through the real pipeline, held to a baseline.

Each case is a short chat (one or more turns, optional `reward_signal` per turn, optional
scripted classifier verdicts, a scripted reply, an operator override applied before the
turn, and settings) run on a fresh database with the scripted backend and a fixed clock.
Its expectations are checked against each named turn's `meta` (plus `bench_prompt`, what
the model was sent), and every turn's control-plane values (`meta_v1` plus `dialogue` and
`reward`, minus what is run-specific) are compared with a golden baseline within
`TOLERANCE`.
`write_baseline=True` rewrites the baseline on purpose (after a deliberate change).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from persona.clock import FixedClock
from persona.config import Settings
from persona.engine import Engine
from persona.errors import TurnFailed
from persona.llm.base import GenOptions
from persona.llm.scripted import ScriptedBackend
from persona.pipeline.context import TurnRequest
from persona.resources import checkout_root
from persona.web.operator import Override, OverrideResult, override

# Floats are compared within this much of the baseline, and written rounded to
# DECIMALS places, so the file is the same bytes on every machine.
TOLERANCE = 2e-6
DECIMALS = 6
# Keys of meta that differ run to run (ids, timings) or release to release (versions,
# the hash of every setting): dropped before comparing.
DROPPED = frozenset({"trace_id", "timing_ms", "build_sha", "engine_version", "config_hash"})
# What the baseline holds of each turn's meta: the stable contract and the state machine's
# and reward's own records.
KEPT = ("meta_v1", "dialogue", "reward")
OPS = ("eq", "ne", "contains", "not_contains", "ge", "le", "gt", "lt")
_HEX_ID = re.compile(r"[0-9a-f]{32}")
# The meta key a case's expectations read the prompt from (never in the baseline).
PROMPT_KEY = "bench_prompt"
# The operator key a case with operator overrides runs under (its own scratch engine).
OPERATOR_KEY = "bench-operator-key"
_OVERRIDE: TypeAdapter[Any] = TypeAdapter(Override)


class CaseError(ValueError):
    """A case file that cannot be run as written."""


@dataclass(frozen=True)
class Expect:
    """One expectation: the value at `path` of turn `turn`'s meta, compared by `op`."""

    turn: int  # 1-based; negative counts from the end
    path: str
    op: str
    value: Any


@dataclass(frozen=True)
class Step:
    """One user message of a case."""

    message: str
    chat: str = "a"
    reward_signal: float = 0.0
    classifier: tuple[str, ...] = ()  # raw structured replies queued before the turn
    advance_s: float = 0.0  # idle time before the turn (the fixed clock moves on)
    reply: str | None = None  # the model's reply this turn (None: the scripted echo)
    operator: dict[str, Any] | None = None  # an override body applied before the turn


@dataclass(frozen=True)
class Case:
    """A named case: its turns, expectations and setting overrides."""

    name: str
    lang: str
    steps: tuple[Step, ...]
    expects: tuple[Expect, ...]
    tags: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    """What a case produced and what went wrong with it."""

    case: Case
    metas: list[dict[str, Any]]
    failures: list[str] = field(default_factory=list)


@dataclass
class BenchReport:
    """Every case's result, and the differences from the baseline."""

    results: list[CaseResult]
    baseline_diffs: list[str]
    baseline_written: bool = False

    @property
    def ok(self) -> bool:
        return not self.baseline_diffs and not any(r.failures for r in self.results)

    def render(self) -> str:
        """A readable, byte-stable report."""
        lines = []
        for r in self.results:
            mark = "FAIL" if r.failures else "ok  "
            lines.append(f"{mark} {r.case.name} ({r.case.lang}, {len(r.case.steps)} turn(s))")
            lines += [f"     {f}" for f in r.failures]
        if self.baseline_written:
            lines.append("baseline written")
        elif self.baseline_diffs:
            lines.append(f"baseline: {len(self.baseline_diffs)} difference(s)")
            lines += [f"  {d}" for d in self.baseline_diffs]
        else:
            lines.append("baseline: all turns match")
        cases = len(self.results)
        failed = sum(1 for r in self.results if r.failures)
        turns = sum(len(r.metas) for r in self.results)
        langs = sorted({r.case.lang for r in self.results})
        verdict = "PASSED" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {cases - failed}/{cases} cases, {turns} turns, languages {','.join(langs)}"
        )
        return "\n".join(lines) + "\n"


def default_cases_path() -> Path:
    """The checkout's bench/control_plane/cases.toml (an installed wheel has no cases)."""
    root = checkout_root()
    if root is None:
        raise CaseError("no checkout: pass --cases PATH to a cases.toml")
    return root / "bench" / "control_plane" / "cases.toml"


def load_cases(path: Path) -> list[Case]:
    """Parse a cases.toml: `[[case]]` tables with `turns` and `[[case.expect]]`."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    cases = [_case(raw) for raw in data.get("case", [])]
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CaseError(f"duplicate case names: {', '.join(dup)}")
    return cases


def _case(raw: dict[str, Any]) -> Case:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CaseError(f"a case without a name: {raw!r}")
    steps = []
    for t in raw.get("turns", []):
        t = {"message": t} if isinstance(t, str) else t
        steps.append(
            Step(
                # repeat: a long message (OVERLOADED) without a page of text in the file
                message=" ".join([t["message"]] * int(t.get("repeat", 1))),
                chat=t.get("chat", "a"),
                reward_signal=float(t.get("reward_signal", 0.0)),
                classifier=tuple(t.get("classifier", ())),
                advance_s=float(t.get("advance_s", 0.0)),
                reply=t.get("reply"),
                operator=_operator(name, t.get("operator")),
            )
        )
    if not steps:
        raise CaseError(f"case {name}: no turns")
    expects = []
    for e in raw.get("expect", []):
        ops = [op for op in OPS if op in e]
        if len(ops) != 1:
            raise CaseError(f"case {name}: an expectation needs exactly one of {OPS}: {e!r}")
        turn = int(e.get("turn", -1))
        if turn == 0 or abs(turn) > len(steps):
            raise CaseError(f"case {name}: no turn {turn}")
        expects.append(Expect(turn, e["path"], ops[0], e[ops[0]]))
    if not expects:
        raise CaseError(f"case {name}: no expectations (a case must be able to fail)")
    return Case(
        name=name,
        lang=raw.get("lang", "en"),
        steps=tuple(steps),
        expects=tuple(expects),
        tags=tuple(raw.get("tags", ())),
        settings=dict(raw.get("settings", {})),
    )


def _operator(name: str, raw: Any) -> dict[str, Any] | None:
    """An override body, validated now as the endpoint would (a typo fails at load)."""
    if raw is None:
        return None
    try:
        _OVERRIDE.validate_python(raw)
    except ValidationError as exc:
        raise CaseError(f"case {name}: an operator override the endpoint refuses: {exc}") from exc
    return dict(raw)


_MISSING = object()


def lookup(meta: Any, path: str) -> Any:
    """The value at a dotted path (`safety.flags`, `dialogue.generation.careful`)."""
    value = meta
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def check(expect: Expect, meta: dict[str, Any]) -> str | None:
    """None when the expectation holds, else why not."""
    got = lookup(meta, expect.path)
    want = expect.value
    where = f"turn {expect.turn}: {expect.path}"
    if got is _MISSING:
        return f"{where}: no such value in meta"
    held: bool
    if expect.op == "eq":
        held = _close(got, want) if isinstance(want, float) else got == want
    elif expect.op == "ne":
        held = got != want
    elif expect.op in ("contains", "not_contains"):
        inside = isinstance(got, list | dict | str) and want in got
        held = inside if expect.op == "contains" else not inside
    else:
        if not isinstance(got, int | float) or isinstance(got, bool):
            return f"{where}: {got!r} is not a number ({expect.op} {want!r})"
        held = {
            "ge": got >= want,
            "le": got <= want,
            "gt": got > want,
            "lt": got < want,
        }[expect.op]
    if held:
        return None
    return (
        f"{where}: expected {expect.op} {json.dumps(want, ensure_ascii=False)},"
        f" got {json.dumps(got, ensure_ascii=False, sort_keys=True)}"
    )


def _close(a: Any, b: float) -> bool:
    return isinstance(a, int | float) and math.isclose(a, b, abs_tol=TOLERANCE)


def _deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


async def _run_case(case: Case, folder: Path) -> list[dict[str, Any]]:
    """Run a case's turns on a fresh DB; each turn's full meta (as JSON).

    A failed turn ends the case: TurnFailed propagates.
    """
    raw = _deep_update({"llm": {"provider": "scripted"}}, case.settings)
    if any(step.operator for step in case.steps):
        raw = _deep_update({"server": {"operator_key": OPERATOR_KEY}}, raw)
    settings = Settings(db_path=folder / "bench.db", **raw)
    backend = ScriptedBackend()
    clock = FixedClock()
    engine = Engine(settings, backend=backend, clock=clock)
    await engine.start()
    metas = []
    try:
        for step in case.steps:
            if step.advance_s:
                clock.advance(timedelta(seconds=step.advance_s))
            backend.enqueue_structured(*step.classifier)
            if step.reply is not None:
                backend.enqueue(step.reply)
            chat_id = f"bench-{step.chat}"
            runner = engine.runner
            pid = await runner.resolve(chat_id, None, "local", engine.default_persona_id)
            if step.operator is not None:
                await _apply_override(engine, pid, step.operator)
            request = TurnRequest(
                step.message, "local", chat_id, pid, step.reward_signal, GenOptions(max_tokens=200)
            )
            calls = len(backend.calls)
            result = await (await runner.submit(request)).result
            meta = result.meta.model_dump(mode="json")
            # For expectations only (the baseline keeps KEPT): what the model was sent this
            # turn, "" when the speaker sent nothing (SILENT).
            meta[PROMPT_KEY] = "\n".join(m.content for c in backend.calls[calls:] for m in c)
            metas.append(meta)
    finally:
        await engine.stop()
    return metas


async def _apply_override(engine: Engine, persona_id: str, body: dict[str, Any]) -> None:
    """Apply an override through the endpoint's own handler, with the configured key."""
    key = engine.settings.server.operator_key
    sent = key.get_secret_value() if key else None
    answer = await override(_OVERRIDE.validate_python(body), engine, sent, persona_id)
    if not isinstance(answer, OverrideResult):  # a refusal (403/404), not a result
        raise CaseError(f"operator override refused: {bytes(answer.body).decode()}")


@contextlib.contextmanager
def seeded_ids(seed: str) -> Iterator[None]:
    """Make `uuid.uuid4` a seeded sequence while a case runs (restored after).

    Why: turn ids become memory ids, and memory retrieval breaks score ties by memory id,
    so random ids would reorder equal-score memories from run to run.
    """
    rng = random.Random(seed)
    real = uuid.uuid4

    def seeded() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    uuid.uuid4 = seeded
    try:
        yield
    finally:
        uuid.uuid4 = real


def run_case(case: Case) -> list[dict[str, Any]]:
    """Run one case in a scratch folder (removed after), its ids seeded by its name."""
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp, seeded_ids(case.name):
        return asyncio.run(_run_case(case, Path(tmp)))


def stable_turn(meta: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The part of a turn's meta the baseline holds, run-specific values dropped.

    Random ids (turn ids inside memory ids, say) become `<id1>`, `<id2>`… in the order
    they first appear in the case, so the same run gives the same text.
    """
    kept = {k: meta.get(k) for k in KEPT}
    return _stable(kept, ids)


def _stable(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v, ids) for k, v in sorted(value.items()) if k not in DROPPED}
    if isinstance(value, list):
        return [_stable(v, ids) for v in value]
    if isinstance(value, float):
        rounded = round(value, DECIMALS)
        return 0.0 if rounded == 0 else rounded
    if isinstance(value, str):
        return _HEX_ID.sub(lambda m: ids.setdefault(m.group(0), f"<id{len(ids) + 1}>"), value)
    return value


def dumps(data: Any) -> str:
    """Canonical JSON text: sorted keys, two-space indent, UTF-8 as is, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def compare(base: Any, now: Any, where: str) -> Iterator[str]:
    """Every difference between a baseline value and the current one (floats within tol)."""
    if isinstance(base, dict) and isinstance(now, dict):
        for k in sorted(set(base) | set(now)):
            sub = f"{where}.{k}" if where else k
            if k not in now:
                yield f"{sub}: in the baseline, gone now"
            elif k not in base:
                yield f"{sub}: new (not in the baseline): {_short(now[k])}"
            else:
                yield from compare(base[k], now[k], sub)
    elif isinstance(base, list) and isinstance(now, list) and len(base) == len(now):
        for i, (b, n) in enumerate(zip(base, now, strict=True)):
            yield from compare(b, n, f"{where}[{i}]")
    elif (
        isinstance(base, int | float)
        and isinstance(now, int | float)
        and not isinstance(base, bool)
        and not isinstance(now, bool)
    ):
        if not math.isclose(base, now, rel_tol=0.0, abs_tol=TOLERANCE):
            yield f"{where}: baseline {base!r}, now {now!r}"
    elif base != now:
        yield f"{where}: baseline {_short(base)}, now {_short(now)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


# Differences listed per case before the rest are only counted (a readable diff).
MAX_DIFFS_PER_CASE = 12


def run_bench(
    cases_path: Path, baseline_path: Path | None = None, write_baseline: bool = False
) -> BenchReport:
    """Run every case, check its expectations, compare with (or write) the baseline."""
    cases = load_cases(cases_path)
    if baseline_path is None:
        baseline_path = cases_path.with_name("baseline.json")
    results = []
    current: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        try:
            metas = run_case(case)
        except TurnFailed as exc:
            results.append(CaseResult(case, [], [f"a turn failed: {exc}"]))
            continue
        result = CaseResult(case, metas)
        for expect in case.expects:
            index = expect.turn - 1 if expect.turn > 0 else len(metas) + expect.turn
            problem = check(expect, metas[index])
            if problem is not None:
                result.failures.append(problem)
        ids: dict[str, str] = {}
        current[case.name] = [stable_turn(m, ids) for m in metas]
        results.append(result)
    report = BenchReport(results, [])
    crashed = {r.case.name for r in results if not r.metas}
    if write_baseline and crashed:
        report.baseline_diffs.append(f"baseline not written: {len(crashed)} case(s) crashed")
        return report
    if write_baseline:
        baseline_path.write_text(dumps(current), encoding="utf-8")
        report.baseline_written = True
        return report
    if not baseline_path.is_file():
        report.baseline_diffs.append(f"no baseline at {baseline_path.name}: run --write-baseline")
        return report
    baseline = json.loads(baseline_path.read_text(encoding="utf-8"))
    for name in sorted(set(baseline) | set(current)):
        if name in crashed:
            continue  # its failure is reported with the case
        if name not in current:
            report.baseline_diffs.append(f"{name}: in the baseline but not among the cases")
            continue
        if name not in baseline:
            report.baseline_diffs.append(f"{name}: not in the baseline (run --write-baseline)")
            continue
        base_turns, now_turns = baseline[name], current[name]
        if len(base_turns) != len(now_turns):
            report.baseline_diffs.append(
                f"{name}: {len(base_turns)} turn(s) in the baseline, {len(now_turns)} now"
            )
            continue
        diffs = [
            f"{name} turn {i}: {d}"
            for i, (b, n) in enumerate(zip(base_turns, now_turns, strict=True), start=1)
            for d in compare(b, n, "")
        ]
        report.baseline_diffs += diffs[:MAX_DIFFS_PER_CASE]
        if len(diffs) > MAX_DIFFS_PER_CASE:
            report.baseline_diffs.append(
                f"{name}: … and {len(diffs) - MAX_DIFFS_PER_CASE} more difference(s)"
            )
    return report
