"""Every bad input gives one ``actscope: error:`` line and exit status 2, before any work.

One row per case: the command line, whose ``{name}`` fields name files written from
``SMALL_FILES`` into the test's folder or made once per module by ``_shared_inputs`` (tiny
Hugging Face folders, corrupt in several ways; profile runs; a steering run), and a piece of
the expected message. Each row asserts exit code 2, exactly
one non-empty stderr line starting with ``actscope: error:`` (so no traceback and no progress
bar before it), nothing on stdout, no run folder, and every file of the test folders
unchanged (no new file, none modified or removed).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from actscope.cli.main import main

BINARY = bytes(range(256)) * 4  # NUL bytes and invalid UTF-8
LATIN1 = "prompt café, naïve\n".encode("latin-1")
PAIR = {"clean": "a b c d", "corrupt": "a b c e", "answer": "x", "wrong": "y"}
PROBE_ROW = {"text": "The city of Paris is in France.", "label": "true"}


def _jsonl(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _probe_rows(n: int, labels: int = 2) -> str:
    return _jsonl([{"text": f"row number {i} here", "label": str(i % labels)} for i in range(n)])


def _yaml(profile: str = "", models: str = "[tiny:llama]") -> str:
    return f"models: {models}\n" + (f"profile:\n{profile}" if profile else "")


# name -> file contents (text or bytes), written to the test's folder as name with "_" -> "."
SMALL_FILES: dict[str, str | bytes] = {
    "empty_txt": "",
    "blank_txt": "\n\n   \n",
    "bin_txt": BINARY,
    "latin1_txt": LATIN1,
    "corpus_txt": "A short corpus.\n\nWith two documents.\n",
    "corpus_csv": "text\nhello\n",
    "empty_jsonl": "",
    "bin_jsonl": BINARY,
    "latin1_jsonl": LATIN1,
    "badjson_jsonl": '{"text": "a"\n',
    "list_jsonl": "[1, 2]\n",
    "numtext_jsonl": '{"text": 5}\n',
    "bin_parquet": BINARY,
    "notgz_jsonl_gz": b"not gzip at all",
    "pairs_jsonl": _jsonl([PAIR]),
    "pairs_nofield_jsonl": _jsonl([{"clean": "a b", "corrupt": "a c"}]),
    "pairs_len_jsonl": _jsonl([{**PAIR, "corrupt": "a b c d e f g"}]),
    "pairs_same_jsonl": _jsonl([{**PAIR, "wrong": "x"}]),
    "prompts_nofield_jsonl": _jsonl([{"prompt": "The capital of France is"}]),
    "prompts_numeric_jsonl": _jsonl([{"prompt": 3, "target": "x"}]),
    "probe2_jsonl": _probe_rows(2),
    "probe_onelabel_jsonl": _probe_rows(40, labels=1),
    "probe_nolabel_jsonl": _jsonl([{"text": "a"}] * 20),
    "probe_jsonl": _probe_rows(40),
    "junk_safetensors": BINARY,
    "junk_gguf": b"GGUF" + BINARY,
    "notgguf_gguf": BINARY,
    "thr_broken_json": "{",
    "thr_other_json": '{"format": "something else"}',
    "yaml_bin": BINARY,
    "yaml_latin1": b"models: [caf\xe9]\n",
    "yaml_empty": "",
    "yaml_invalid": "models: [tiny:llama\n",
    "yaml_list": "- tiny:llama\n",
    "yaml_nomodels": "corpus: default\n",
    "yaml_unknown_key": _yaml() + "colour: red\n",
    "yaml_unknown_option": _yaml("  tokens: 5\n"),
    "yaml_seq_str": _yaml("  seq_len: long\n"),
    "yaml_seq_zero": _yaml("  seq_len: 0\n"),
    "yaml_batch_float": _yaml("  batch_size: 1.5\n"),
    "yaml_maxtok_neg": _yaml("  max_tokens: -3\n"),
    "yaml_sites_int": _yaml("  sites: 3\n"),
    "yaml_topk_bool": _yaml("  top_k: true\n"),
    "yaml_bos": _yaml("  bos: sometimes\n"),
    "yaml_quantiles": _yaml("  quantiles: [0.5, 2]\n"),
    "yaml_profile_list": "models: [tiny:llama]\nprofile: [1, 2]\n",
    "yaml_model_int": "models: [3]\n",
    "yaml_model_unknown": "models: [no-such-model-x]\n",
    "yaml_corpus_missing": "models: [tiny:llama]\ncorpus: nowhere.txt\n",
    "yaml_dtype": "models: [tiny:llama]\ndtype: int3\n",
    "yaml_dup": "models: [tiny:llama, tiny:llama]\n",
}


def _tiny_hf(folder: Path, nan: bool = False) -> Path:
    """A tiny Llama saved with save_pretrained (weights NaN when ``nan``)."""
    from actscope.models.tiny import build_tiny, byte_tokenizer

    model = build_tiny("llama")
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _shared_inputs(root: Path) -> dict[str, Path]:
    """Inputs that take a model or a run to make: built once per module."""
    paths: dict[str, Path] = {}
    good = _tiny_hf(root / "hf_good")
    weights = good / "model.safetensors"
    for name, damage in (
        ("hf_truncated", lambda d: (d / "model.safetensors").write_bytes(weights.read_bytes()[:500])),
        ("hf_junk", lambda d: (d / "model.safetensors").write_bytes(BINARY)),
        ("hf_bin", lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin")),
        ("hf_pickle_junk", lambda d: (
            (d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(BINARY)
        )),
        ("hf_noweights", lambda d: (d / "model.safetensors").unlink()),
        ("hf_badconfig", lambda d: (d / "config.json").write_text("{")),
        ("hf_config_bin", lambda d: (d / "config.json").write_bytes(BINARY)),
        ("hf_config_type", lambda d: (d / "config.json").write_text('{"model_type": "nosuch"}')),
    ):
        shutil.copytree(good, root / name)
        damage(root / name)
        paths[name] = root / name
    paths["hf_nan"] = _tiny_hf(root / "hf_nan", nan=True)
    corpus = root / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    paths["corpus"] = corpus
    prof = root / "profile_llama"
    argv = ["profile", "-m", "tiny:llama", "-c", str(corpus), "-o", str(prof), "--max-tokens", "200"]
    assert main([*argv, "--seq-len", "64"]) == 0
    paths["profile_llama"] = prof
    other = root / "profile_other"
    shutil.copytree(prof, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"].update(name="tiny:gpt2", family="gpt2", n_parameters=1)
    (other / "manifest.json").write_text(json.dumps(manifest))
    paths["profile_other"] = other
    nosummary = root / "profile_nosummary"
    shutil.copytree(prof, nosummary)
    (nosummary / "summary.json").unlink()
    paths["profile_nosummary"] = nosummary
    badmanifest = root / "profile_badmanifest"
    shutil.copytree(prof, badmanifest)
    (badmanifest / "manifest.json").write_bytes(BINARY)
    paths["profile_badmanifest"] = badmanifest
    steer = root / "steer_run"
    steer.mkdir()
    (steer / "manifest.json").write_text(
        json.dumps({"command": "steer train", "model": manifest["model"], "args": {}})
    )
    (steer / "summary.json").write_text("{}")
    paths["steer_run"] = steer
    notrun = root / "not_a_run"
    notrun.mkdir()
    (notrun / "notes.txt").write_text("mine")
    paths["not_a_run"] = notrun
    from actscope.analyses.explain.lens import TunedLens

    lens = TunedLens(torch.zeros(3, 8, 8), torch.zeros(3, 8), ["a", "b", "c"])
    paths["lens_other"] = lens.save(root / "lens_other.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(root / "lens_nokeys.safetensors"))
    paths["lens_nokeys"] = root / "lens_nokeys.safetensors"
    return paths


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _shared_inputs(tmp_path_factory.mktemp("shared"))


@dataclass(frozen=True)
class Case:
    """One bad command line and a piece of the message it must print."""

    id: str
    argv: str
    match: str


_c = Case  # a short name for the rows of the table


M = "-m tiny:llama"
G = "-m tiny:gpt2"
CASES: list[Case] = [
    # models, through `sites` (the cheapest command that loads one)
    _c("model-unknown", "sites no-such-model-x", "unknown model"),
    _c("model-tiny-unknown", "sites tiny:nosuch", "unknown tiny family"),
    _c("model-file-not-gguf", "sites {corpus_txt}", "not a .gguf"),
    _c("model-gguf-junk", "sites {junk_gguf}", "GGUF"),
    _c("model-gguf-bad-magic", "sites {notgguf_gguf}", "not a GGUF file"),
    _c("model-empty-folder", "sites {emptydir}", "neither config.json"),
    _c("model-hf-truncated-safetensors", "sites {hf_truncated}", "cannot load"),
    _c("model-hf-junk-safetensors", "sites {hf_junk}", "cannot load"),
    _c("model-hf-bin-weights", "sites {hf_bin}", "cannot load"),
    _c("model-hf-junk-pickle", "sites {hf_pickle_junk}", "cannot load"),
    _c("model-hf-no-weights", "sites {hf_noweights}", "cannot load"),
    _c("model-hf-broken-config", "sites {hf_badconfig}", "cannot load"),
    _c("model-hf-binary-config", "sites {hf_config_bin}", "cannot load"),
    _c("model-hf-unknown-type", "sites {hf_config_type}", "cannot load"),
    _c("model-hub-not-cached", "sites someorg/somemodel-x", "not in the local"),
    _c("device-cuda-on-cpu", "sites tiny:llama --device cuda", "cuda"),
    _c("device-cuda-index", "sites tiny:llama --device cuda:3", "cuda"),
    _c("device-unknown", "sites tiny:llama --device tpu", "device"),
    _c("dtype-unknown", "sites tiny:llama --dtype int3", "unknown dtype"),
    _c("sites-unknown-site", "sites tiny:llama -s nosuch", "nosuch"),
    _c("sites-layer-out-of-range", "sites tiny:llama -s resid_post.99", "99"),
    _c("sites-glob-matches-nothing", "sites tiny:llama -s zz*", "zz"),
    _c("cli-unknown-option", "sites tiny:llama --colour red", "colour"),
    _c("cli-int-option-text", "profile -m tiny:llama --seq-len long", "seq-len"),
    _c("cli-unknown-command", "sights tiny:llama", "sights"),
    # profile
    _c("profile-corpus-missing", f"profile {M} -c {{missing}} -o {{out}}", "not found"),
    _c("profile-corpus-empty", f"profile {M} -c {{empty_txt}} -o {{out}}", "no non-empty"),
    _c("profile-corpus-blank", f"profile {M} -c {{blank_txt}} -o {{out}}", "no non-empty"),
    _c("profile-corpus-binary", f"profile {M} -c {{bin_txt}} -o {{out}}", "UTF-8"),
    _c("profile-corpus-latin1", f"profile {M} -c {{latin1_txt}} -o {{out}}", "UTF-8"),
    _c("profile-corpus-jsonl-binary", f"profile {M} -c {{bin_jsonl}} -o {{out}}", "UTF-8"),
    _c("profile-corpus-jsonl-broken", f"profile {M} -c {{badjson_jsonl}} -o {{out}}", "JSON"),
    _c("profile-corpus-jsonl-list", f"profile {M} -c {{list_jsonl}} -o {{out}}", "object"),
    _c("profile-corpus-jsonl-numtext", f"profile {M} -c {{numtext_jsonl}} -o {{out}}", "string"),
    _c("profile-corpus-jsonl-empty", f"profile {M} -c {{empty_jsonl}} -o {{out}}", "no non-empty"),
    _c("profile-corpus-csv", f"profile {M} -c {{corpus_csv}} -o {{out}}", "unsupported"),
    _c("profile-corpus-gzip-broken", f"profile {M} -c {{notgz_jsonl_gz}} -o {{out}}", "gz"),
    _c("profile-corpus-parquet-junk", f"profile {M} -c {{bin_parquet}} -o {{out}}", "parquet"),
    _c("profile-corpus-empty-folder", f"profile {M} -c {{emptydir}} -o {{out}}", "no corpus"),
    _c("profile-seq-len-zero", f"profile {M} --seq-len 0 -o {{out}}", "seq_len"),
    _c("profile-seq-len-negative", f"profile {M} --seq-len -4 -o {{out}}", "seq_len"),
    _c("profile-seq-len-beyond-gpt2", f"profile {G} --seq-len 4096 -o {{out}}", "positions"),
    _c("profile-seq-len-beyond-llama", f"profile {M} --seq-len 4096 -o {{out}}", "positions"),
    _c("profile-batch-size-zero", f"profile {M} --batch-size 0 -o {{out}}", "batch_size"),
    _c("profile-max-tokens-negative", f"profile {M} --max-tokens -5 -o {{out}}", "max_tokens"),
    _c("profile-top-k-zero", f"profile {M} --top-k 0 -o {{out}}", "top_k"),
    _c("profile-bos-unknown", f"profile {M} --bos sometimes -o {{out}}", "bos"),
    _c("profile-site-unknown", f"profile {M} -s nosuch -o {{out}}", "nosuch"),
    _c("profile-layer-out-of-range", f"profile {M} -s mlp_out.7 -o {{out}}", "7"),
    _c("profile-model-unknown", "profile -m no-such-model-x -o {out}", "unknown model"),
    _c("profile-model-hf-corrupt", "profile -m {hf_truncated} -o {out}", "cannot load"),
    _c("profile-device-cuda", f"profile {M} --device cuda -o {{out}}", "cuda"),
    _c("profile-dtype-unknown", f"profile {M} --dtype int3 -o {{out}}", "dtype"),
    _c("profile-nan-model", "profile -m {hf_nan} -c {corpus} -o {out} --max-tokens 64",
       "non-finite"),
    _c("profile-workers-zero", f"profile {M} --ray --workers 0 -o {{out}}", "workers"),
    # compare
    _c("compare-missing", "compare {missing} -o {out}", "not found"),
    _c("compare-not-a-run", "compare {not_a_run} -o {out}", "manifest.json"),
    _c("compare-no-summary", "compare {profile_nosummary} -o {out}", "summary.json"),
    _c("compare-steer-run", "compare {steer_run} -o {out}", "not a profile run"),
    _c("compare-binary-manifest", "compare {profile_badmanifest} -o {out}", "manifest.json"),
    _c("compare-good-then-steer", "compare {profile_llama} {steer_run} -o {out}", "steer train"),
    _c("compare-a-file", "compare {corpus_txt} -o {out}", "run"),
    # sweep
    _c("sweep-missing", "sweep {missing} --local -o {out}", "sweep file"),
    _c("sweep-binary", "sweep {yaml_bin} --local -o {out}", "UTF-8"),
    _c("sweep-latin1", "sweep {yaml_latin1} --local -o {out}", "UTF-8"),
    _c("sweep-empty", "sweep {yaml_empty} --local -o {out}", "mapping"),
    _c("sweep-invalid-yaml", "sweep {yaml_invalid} --local -o {out}", "YAML"),
    _c("sweep-list", "sweep {yaml_list} --local -o {out}", "mapping"),
    _c("sweep-no-models", "sweep {yaml_nomodels} --local -o {out}", "models"),
    _c("sweep-unknown-key", "sweep {yaml_unknown_key} --local -o {out}", "colour"),
    _c("sweep-unknown-option", "sweep {yaml_unknown_option} --local -o {out}", "tokens"),
    _c("sweep-seq-len-text", "sweep {yaml_seq_str} --local -o {out}", "seq_len"),
    _c("sweep-seq-len-zero", "sweep {yaml_seq_zero} --local -o {out}", "seq_len"),
    _c("sweep-batch-size-float", "sweep {yaml_batch_float} --local -o {out}", "batch_size"),
    _c("sweep-max-tokens-negative", "sweep {yaml_maxtok_neg} --local -o {out}", "max_tokens"),
    _c("sweep-sites-int", "sweep {yaml_sites_int} --local -o {out}", "sites"),
    _c("sweep-top-k-bool", "sweep {yaml_topk_bool} --local -o {out}", "top_k"),
    _c("sweep-bos-unknown", "sweep {yaml_bos} --local -o {out}", "bos"),
    _c("sweep-quantile-above-1", "sweep {yaml_quantiles} --local -o {out}", "quantiles"),
    _c("sweep-profile-not-mapping", "sweep {yaml_profile_list} --local -o {out}", "profile"),
    _c("sweep-model-int", "sweep {yaml_model_int} --local -o {out}", "model"),
    _c("sweep-model-unknown", "sweep {yaml_model_unknown} --local -o {out}", "unknown model"),
    _c("sweep-corpus-missing", "sweep {yaml_corpus_missing} --local -o {out}", "not found"),
    _c("sweep-dtype-unknown", "sweep {yaml_dtype} --local -o {out}", "dtype"),
    _c("sweep-duplicate-models", "sweep {yaml_dup} --local -o {out}", "unique"),
    # cache
    _c("cache-model-unknown", "cache no-such-model-x -s resid_post -o {out}", "unknown model"),
    _c("cache-site-unknown", "cache tiny:llama -s nosuch -o {out}", "nosuch"),
    _c("cache-corpus-missing", "cache tiny:llama -s resid_post --corpus {missing} -o {out}",
       "not found"),
    _c("cache-corpus-binary", "cache tiny:llama -s resid_post --corpus {bin_txt} -o {out}",
       "UTF-8"),
    _c("cache-seq-len-zero", "cache tiny:llama -s resid_post --seq-len 0 -o {out}", "seq_len"),
    _c("cache-seq-len-beyond", "cache tiny:gpt2 -s resid_post --seq-len 999 -o {out}",
       "positions"),
    _c("cache-batch-size-zero", "cache tiny:llama -s resid_post --batch-size 0 -o {out}",
       "batch_size"),
    _c("cache-max-tokens-zero", "cache tiny:llama -s resid_post --max-tokens 0 -o {out}",
       "max_tokens"),
    _c("cache-store-dtype", "cache tiny:llama -s resid_post --store-dtype int3 -o {out}",
       "dtype"),
    _c("cache-shard-mb-zero", "cache tiny:llama -s resid_post --shard-mb 0 -o {out}", "shard"),
    _c("cache-bos-unknown", "cache tiny:llama -s resid_post --bos x -o {out}", "BOS"),
    _c("cache-device-cuda", "cache tiny:llama -s resid_post --device cuda -o {out}", "cuda"),
    _c("cache-verify-missing", "cache-verify {missing}", "missing"),
    _c("cache-verify-not-a-store", "cache-verify {not_a_run}", "store"),
    # quant
    _c("quant-alphas-text", f"quant {M} --alphas x,y -o {{out}}", "alphas"),
    _c("quant-alpha-above-1", f"quant {M} --alphas 1.5 -o {{out}}", "alpha"),
    _c("quant-scheme-unknown", f"quant {M} --schemes W9A9 -o {{out}}", "W9A9"),
    _c("quant-quantizer-unknown", f"quant {M} -q int9-bogus -o {{out}}", "int9-bogus"),
    _c("quant-grid-unknown", f"quant {M} --grid huge -o {{out}}", "grid"),
    _c("quant-split-zero", f"quant {M} --split 0 -o {{out}}", "split"),
    _c("quant-split-above-1", f"quant {M} --split 1.5 -o {{out}}", "split"),
    _c("quant-calib-tokens-zero", f"quant {M} --calib-tokens 0 -o {{out}}", "calib_tokens"),
    _c("quant-seq-len-zero", f"quant {M} --seq-len 0 -o {{out}}", "seq_len"),
    _c("quant-seq-len-beyond", f"quant {G} --seq-len 1000 -o {{out}}", "positions"),
    _c("quant-batch-size-zero", f"quant {M} --batch-size 0 -o {{out}}", "batch_size"),
    _c("quant-bos-unknown", f"quant {M} --bos x -o {{out}}", "bos"),
    _c("quant-corpus-missing", f"quant {M} -c {{missing}} -o {{out}}", "not found"),
    _c("quant-corpus-binary", f"quant {M} -c {{bin_txt}} -o {{out}}", "UTF-8"),
    _c("quant-site-unknown", f"quant {M} -s nosuch -o {{out}}", "nosuch"),
    _c("quant-model-unknown", "quant -m no-such-model-x -o {out}", "unknown model"),
    _c("covary-missing", "covary {missing} -o {out}", "not found"),
    _c("covary-not-quant", "covary {profile_llama} -o {out}", "not a quant run"),
    _c("imatrix-tokens-zero", f"imatrix {M} --tokens 0 --seq-len 64 -o {{out}}", "--tokens"),
    _c("imatrix-seq-len-beyond", f"imatrix {G} --seq-len 4096 -o {{out}}", "positions"),
    # ablate
    _c("ablate-topk-text", f"ablate -p {{profile_llama}} {M} --topk a,b -o {{out}}", "topk"),
    _c("ablate-topk-zero", f"ablate -p {{profile_llama}} {M} --topk 0 -o {{out}}", "top-k"),
    _c("ablate-modes-unknown", f"ablate -p {{profile_llama}} {M} --modes foo -o {{out}}", "modes"),
    _c("ablate-layers-unknown", f"ablate -p {{profile_llama}} {M} --layers mid -o {{out}}",
       "layers"),
    _c("ablate-median-unknown", f"ablate -p {{profile_llama}} {M} --median x -o {{out}}",
       "median"),
    _c("ablate-split-zero", f"ablate -p {{profile_llama}} {M} --split 0 -o {{out}}", "split"),
    _c("ablate-eval-tokens-zero", f"ablate -p {{profile_llama}} {M} --eval-tokens 0 -o {{out}}",
       "eval_tokens"),
    _c("ablate-seq-len-beyond", f"ablate -p {{profile_llama}} {M} --seq-len 999 -o {{out}}",
       "positions"),
    _c("ablate-profile-missing", f"ablate -p {{missing}} {M} -o {{out}}", "not found"),
    _c("ablate-profile-not-a-run", f"ablate -p {{not_a_run}} {M} -o {{out}}", "manifest.json"),
    _c("ablate-profile-steer-run", f"ablate -p {{steer_run}} {M} -o {{out}}", "not a profile"),
    _c("ablate-profile-other-model", f"ablate -p {{profile_other}} {M} -o {{out}}",
       "tiny:gpt2"),
    _c("ablate-corpus-binary", f"ablate -p {{profile_llama}} {M} -c {{bin_txt}} -o {{out}}",
       "UTF-8"),
    # sparsity
    _c("sparsity-measure-eps-text", f"sparsity measure {M} --eps x -o {{out}}", "--eps"),
    _c("sparsity-measure-tokens-zero", f"sparsity measure {M} --tokens 0 -o {{out}}", "--tokens"),
    _c("sparsity-measure-corpus-binary", f"sparsity measure {M} -c {{bin_txt}} -o {{out}}",
       "UTF-8"),
    _c("sparsity-calibrate-rule", f"sparsity calibrate {M} --rules foo -o {{out}}", "foo"),
    _c("sparsity-calibrate-target-1", f"sparsity calibrate {M} --targets 1.5 -o {{out}}",
       "target"),
    _c("sparsity-calibrate-target-text", f"sparsity calibrate {M} --targets x -o {{out}}",
       "--targets"),
    _c("sparsity-calibrate-allocation", f"sparsity calibrate {M} --allocation foo -o {{out}}",
       "foo"),
    _c("sparsity-calibrate-tokens-zero", f"sparsity calibrate {M} --tokens 0 -o {{out}}",
       "--tokens"),
    _c("sparsity-calibrate-fraction", f"sparsity calibrate {M} --fraction 0 -o {{out}}",
       "fraction"),
    _c("sparsity-calibrate-seq-beyond", f"sparsity calibrate {G} --rules teal --seq-len 999 -o {{out}}",
       "positions"),
    _c("sparsity-calibrate-corpus-latin1", f"sparsity calibrate {M} -c {{latin1_txt}} -o {{out}}",
       "UTF-8"),
    _c("sparsity-evaluate-thr-missing", f"sparsity evaluate -t {{missing}} {M} -o {{out}}",
       "does not exist"),
    _c("sparsity-evaluate-thr-binary", f"sparsity evaluate -t {{bin_txt}} {M} -o {{out}}",
       "thresholds"),
    _c("sparsity-evaluate-thr-broken", f"sparsity evaluate -t {{thr_broken_json}} {M} -o {{out}}",
       "thresholds"),
    _c("sparsity-evaluate-thr-other", f"sparsity evaluate -t {{thr_other_json}} {M} -o {{out}}",
       "thresholds"),
    _c("sparsity-evaluate-tokens-zero", f"sparsity evaluate {M} --topk --tokens 0 -o {{out}}",
       "--tokens"),
    _c("sparsity-evaluate-prefill", f"sparsity evaluate {M} --prefill-fraction 0 -o {{out}}",
       "prefill"),
    _c("sparsity-evaluate-target-text", f"sparsity evaluate {M} --targets a -o {{out}}",
       "--targets"),
    _c("sparsity-bench-thr-missing", f"sparsity bench -t {{missing}} {M} -o {{out}}",
       "does not exist"),
    _c("sparsity-bench-kernel", f"sparsity bench {M} --topk --kernels foo -o {{out}}", "foo"),
    _c("sparsity-bench-dtype", f"sparsity bench {M} --topk --dtypes int3 -o {{out}}", "int3"),
    _c("sparsity-bench-rule", f"sparsity bench {M} --topk --rule foo -o {{out}}", "foo"),
    _c("sparsity-bench-repeats-zero", f"sparsity bench {M} --topk --repeats 0 -o {{out}}",
       "repeats"),
    _c("sparsity-bench-new-tokens-zero", f"sparsity bench {M} --topk --new-tokens 0 -o {{out}}",
       "new"),
    # patch
    _c("patch-pairs-missing", f"patch {M} -p {{missing}} -o {{out}}", "unknown dataset"),
    _c("patch-pairs-binary", f"patch {M} -p {{bin_jsonl}} -o {{out}}", "UTF-8"),
    _c("patch-pairs-latin1", f"patch {M} -p {{latin1_jsonl}} -o {{out}}", "UTF-8"),
    _c("patch-pairs-empty", f"patch {M} -p {{empty_jsonl}} -o {{out}}", "no rows"),
    _c("patch-pairs-broken", f"patch {M} -p {{badjson_jsonl}} -o {{out}}", "JSON"),
    _c("patch-pairs-list", f"patch {M} -p {{list_jsonl}} -o {{out}}", "object"),
    _c("patch-pairs-no-field", f"patch {M} -p {{pairs_nofield_jsonl}} -o {{out}}", "lacks"),
    _c("patch-pairs-lengths", f"patch {M} -p {{pairs_len_jsonl}} -o {{out}}", "equal lengths"),
    _c("patch-pairs-same-answer", f"patch {M} -p {{pairs_same_jsonl}} -o {{out}}", "same token"),
    _c("patch-method-unknown", f"patch {M} -p {{pairs_jsonl}} --method foo -o {{out}}", "method"),
    _c("patch-direction-unknown", f"patch {M} -p {{pairs_jsonl}} --direction up -o {{out}}",
       "direction"),
    _c("patch-site-unknown", f"patch {M} -p {{pairs_jsonl}} -s nosuch -o {{out}}", "nosuch"),
    _c("patch-batch-size-zero", f"patch {M} -p {{pairs_jsonl}} --batch-size 0 -o {{out}}",
       "batch"),
    _c("patch-limit-negative", f"patch {M} -p {{pairs_jsonl}} --limit -1 -o {{out}}", "limit"),
    # lens
    _c("lens-prompts-missing", f"lens {M} -p {{missing}} -o {{out}}", "unknown dataset"),
    _c("lens-prompts-binary", f"lens {M} -p {{bin_jsonl}} -o {{out}}", "UTF-8"),
    _c("lens-prompts-latin1", f"lens {M} -p {{latin1_jsonl}} -o {{out}}", "UTF-8"),
    _c("lens-prompts-broken", f"lens {M} -p {{badjson_jsonl}} -o {{out}}", "JSON"),
    _c("lens-prompts-no-field", f"lens {M} -p {{prompts_nofield_jsonl}} -o {{out}}", "target"),
    _c("lens-tuned-from-missing", f"lens {M} --tuned-from {{missing}} -o {{out}}",
       "does not exist"),
    _c("lens-tuned-from-binary", f"lens {M} --tuned-from {{junk_safetensors}} -o {{out}}",
       "tuned lens"),
    _c("lens-tuned-from-text", f"lens {M} --tuned-from {{corpus_txt}} -o {{out}}", "tuned lens"),
    _c("lens-tuned-from-no-keys", f"lens {M} --tuned-from {{lens_nokeys}} -o {{out}}",
       "tuned lens"),
    _c("lens-tuned-from-other-model", f"lens {M} --tuned-from {{lens_other}} -o {{out}}",
       "tuned lens"),
    _c("lens-fit-tokens-zero", f"lens {M} --tuned --fit-tokens 0 -o {{out}}", "fit"),
    _c("lens-eval-tokens-negative", f"lens {M} --eval-tokens -1 -o {{out}}", "--eval-tokens"),
    _c("lens-ridge-negative", f"lens {M} --ridge -1 -o {{out}}", "ridge"),
    _c("lens-seq-len-zero", f"lens {M} --seq-len 0 -o {{out}}", "--seq-len"),
    _c("lens-limit-negative", f"lens {M} --limit -2 -o {{out}}", "limit"),
    _c("lens-corpus-binary", f"lens {M} --tuned -c {{bin_txt}} -o {{out}}", "UTF-8"),
    # probe
    _c("probe-data-missing", f"probe {M} -d {{missing}} -o {{out}}", "unknown dataset"),
    _c("probe-data-binary", f"probe {M} -d {{bin_jsonl}} -o {{out}}", "UTF-8"),
    _c("probe-data-latin1", f"probe {M} -d {{latin1_jsonl}} -o {{out}}", "UTF-8"),
    _c("probe-data-broken", f"probe {M} -d {{badjson_jsonl}} -o {{out}}", "JSON"),
    _c("probe-data-no-label", f"probe {M} -d {{probe_nolabel_jsonl}} -o {{out}}", "label"),
    _c("probe-two-rows", f"probe {M} -d {{probe2_jsonl}} -o {{out}}", "rows"),
    _c("probe-one-label", f"probe {M} -d {{probe_onelabel_jsonl}} -o {{out}}", "two distinct"),
    _c("probe-folds-one", f"probe {M} -d {{probe_jsonl}} --folds 1 -o {{out}}", "folds"),
    _c("probe-folds-zero", f"probe {M} -d {{probe_jsonl}} --folds 0 -o {{out}}", "folds"),
    _c("probe-folds-above-rows", f"probe {M} -d {{probe_jsonl}} --folds 50 -o {{out}}", "rows of each label"),
    _c("probe-position-unknown", f"probe {M} -d {{probe_jsonl}} --position first -o {{out}}",
       "position"),
    _c("probe-c-zero", f"probe {M} -d {{probe_jsonl}} --C 0 -o {{out}}", "C"),
    _c("probe-site-unknown", f"probe {M} -d {{probe_jsonl}} -s nosuch -o {{out}}", "nosuch"),
    _c("probe-batch-size-zero", f"probe {M} -d {{probe_jsonl}} --batch-size 0 -o {{out}}",
       "batch"),
    # clue
    _c("clue-max-operand-negative", f"clue {M} --max-operand -1 -o {{out}}", "max-operand"),
    _c("clue-n-zero", f"clue {M} --n 0 -o {{out}}", "--n"),
    _c("clue-folds-one", f"clue {M} --folds 1 -o {{out}}", "folds"),
    _c("clue-max-new-tokens-zero", f"clue {M} --max-new-tokens 0 -o {{out}}", "max-new-tokens"),
    _c("clue-batch-size-zero", f"clue {M} --batch-size 0 -o {{out}}", "batch"),
    _c("clue-device-cuda", f"clue {M} --device cuda -o {{out}}", "cuda"),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    """Path -> sha256 of every file (and '' for every folder) under ``roots``."""
    seen: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            seen[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    return seen


def _argv(case: Case, tmp: Path, shared: dict[str, Path]) -> list[str]:
    """The case's argv with every ``{name}`` field replaced by the real path."""
    values: dict[str, str] = {"out": str(tmp / "out"), "missing": str(tmp / "missing.jsonl")}
    (tmp / "emptydir").mkdir(exist_ok=True)
    values["emptydir"] = str(tmp / "emptydir")
    for name, content in SMALL_FILES.items():
        path = tmp / name.replace("_", ".")  # bin_txt -> bin.txt, a_jsonl_gz -> a.jsonl.gz
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        values[name] = str(path)
    values.update({k: str(v) for k, v in shared.items()})
    return [part.format(**values) for part in case.argv.split()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_error_line(
    case: Case,
    tmp_path: Path,
    shared: dict[str, Path],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if torch.cuda.is_available() and re.search(r"--device cuda(\s|$)", case.argv):
        pytest.skip("--device cuda is valid on this machine")
    monkeypatch.chdir(tmp_path)  # a default output folder would land here
    argv = _argv(case, tmp_path, shared)
    shared_root = next(iter(shared.values())).parent
    before = _snapshot(tmp_path, shared_root)
    capfd.readouterr()
    code = main(argv)
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one line, got:\n{err[-3000:]}"
    assert lines[0].startswith("actscope: error: "), lines[0]
    assert case.match in lines[0], lines[0]
    assert out == ""
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path, shared_root) == before


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 110

