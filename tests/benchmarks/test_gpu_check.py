"""benchmarks/gpu_check.py: the dry run's records and summary, section isolation, CUDA test
discovery and the section alarm (the device run itself needs a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


gc_mod = _load()

# variables the script sets for its own process; restored after each test, so that running it
# in the test process leaves later tests the environment they started with
_SCRIPT_ENV = (
    "ACTSCOPE_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_VERBOSITY",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "PYTHONPATH",
)


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in _SCRIPT_ENV:  # recorded by setenv, so undone after the test even if absent
        before = os.environ.get(name)
        monkeypatch.setenv(name, before or "")
        if before is None:
            monkeypatch.delenv(name)


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def _reference_fields() -> dict[str, set[str]]:
    """Per bench, every field that benchmarks/results.jsonl records carry."""
    fields: dict[str, set[str]] = {}
    for line in (ROOT / "benchmarks" / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        fields.setdefault(rec["bench"], set()).update(rec)
    return fields


def test_dry_run_records_every_section_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = gc_mod.main(["--dry-run", "--out", str(tmp_path)])
    recs = _records(tmp_path)
    failed = [r for r in recs if r["status"] not in ("ok", "skipped")]
    assert rc == 0 and not failed, failed
    assert {r["section"] for r in recs} == set(gc_mod.SECTIONS)
    for r in recs:
        assert {"bench", "section", "status", "date", "check"} <= set(r)
        assert r["check"] == "dry-run"
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_bench.setdefault(r["bench"], []).append(r)
    # the records of the existing benchmarks carry every field of benchmarks/results.jsonl
    for bench, fields in _reference_fields().items():
        assert by_bench.get(bench), f"no {bench} record"
        for r in by_bench[bench]:
            assert fields <= set(r), (bench, sorted(fields - set(r)))
            assert r["device"] == "cpu" and r["model"] == "tiny:llama"
    prof = by_bench["profile"]
    assert [p["batch"] for p in prof] == ["2x32", "8x32"]  # comparison, then largest probed
    assert all(p["target"] == 1.1 and isinstance(p["meets_target"], bool) for p in prof)
    assert prof[0]["naive_tok_s"] > 0 and prof[1]["naive_tok_s"] is None
    assert prof[1]["largest_fitting"] and "8" in prof[1]["batch_probe"]
    steer = by_bench["steer"][0]
    assert steer["steered_over_plain"] > 0 and steer["extract_b16_texts_s"] > 0
    assert {(r["kernel"], r["target"]) for r in by_bench["sparse_decode"]} == {
        ("bag", 0.4),
        ("bag", 0.5),
    }
    # on the CPU the per-layer GEMV benchmark runs too, and each record carries its speed-up
    assert all(r["layer_gemv_speedup"] > 0 for r in by_bench["sparse_decode"])
    patch = by_bench["patch"][0]
    assert patch["units"] > 0 and patch["exact_rows"] == patch["atp_rows"] == patch["units"]
    tests = by_bench["cuda_tests"][0]
    assert tests["skipped"] == len(tests["tests"]) >= 2 and tests["failed"] == 0
    sae = by_bench["sae_train"][0]
    assert sae["status"] == "skipped" and "no SAE training" in sae["reason"]
    printed = capsys.readouterr().out
    assert "gpu_check" in printed and "dry run" in printed
    for name in gc_mod.SECTIONS:
        assert name in printed
    assert (tmp_path / "summary.txt").read_text().count("profile") == 2


def test_a_failing_section_is_recorded_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(ck: Any) -> None:
        raise ValueError("planted failure")

    sections = {
        "env": gc_mod.SECTIONS["env"],
        "models": gc_mod.SECTIONS["models"],
        "boom": (boom, 1.0),
        "sae_train": gc_mod.SECTIONS["sae_train"],
    }
    monkeypatch.setattr(gc_mod, "SECTIONS", sections)
    rc = gc_mod.main(["--dry-run", "--out", str(tmp_path)])
    recs = {r["section"]: r for r in _records(tmp_path)}
    assert rc == 1
    assert recs["boom"]["status"] == "failed"
    assert recs["boom"]["error"] == "ValueError: planted failure"
    assert recs["sae_train"]["status"] == "skipped"
    assert "planted failure" in (tmp_path / "log.txt").read_text()


def test_cuda_tests_are_found_by_their_skip_decorators() -> None:
    ids = gc_mod.cuda_test_ids()
    assert "tests/stats/test_site.py::test_cuda_update_never_synchronises" in ids
    assert (
        "tests/distributed/test_devices.py::test_real_device_split_delivers_tensors_where_computed"
        in ids
    )
    assert all("::test" in i for i in ids)


def test_alarm_stops_a_section_that_outlives_its_budget() -> None:
    t0 = time.monotonic()
    with pytest.raises(gc_mod.SectionTimeout), gc_mod.alarm(0.2):
        time.sleep(5)
    assert time.monotonic() - t0 < 2
    with gc_mod.alarm(5):  # a section that ends in time is left alone, the alarm cleared
        pass
    time.sleep(0.01)


def test_a_failing_or_slow_model_does_not_stop_the_next_one(tmp_path: Path) -> None:
    ck = gc_mod.Check(gc_mod.parse_args(["--dry-run", "--out", str(tmp_path)]), time.monotonic())
    ck.slots = {s: gc_mod.Loaded(s, s, "tiny") for s in ("a", "b", "c")}
    ck.section, ck.section_end = "demo", time.monotonic() + 6.0  # ~2 s a model

    def one(check: Any, slot: str, share: float) -> None:
        if slot == "a":
            raise RuntimeError("model a broke")
        if slot == "b":
            time.sleep(20)  # over its share
        check.add({"bench": "demo", "share": share}, slot=slot)

    ck.for_models("demo", one)
    ck.log_fh.close()
    ck.records_fh.close()
    assert len(_records(tmp_path)) == 3  # records.jsonl is written as records come
    got = {r["model"]: r for r in ck.records}
    assert got["a"]["status"] == "failed" and got["a"]["error"] == "RuntimeError: model a broke"
    assert got["b"]["status"] == "timeout"
    assert got["c"]["status"] == "ok" and 1 <= got["c"]["share"] <= 6.0


def test_an_inner_alarm_rearms_the_enclosing_one() -> None:
    t0 = time.monotonic()
    with pytest.raises(gc_mod.SectionTimeout), gc_mod.alarm(0.5):
        with gc_mod.alarm(5):  # never outlives the outer alarm
            pass
        time.sleep(5)  # the outer alarm, re-armed, still fires
    assert time.monotonic() - t0 < 2
