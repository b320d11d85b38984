"""`actscope sites`: listing, and one-line errors with exit status 2."""

from __future__ import annotations

import pytest

from actscope.cli.main import main


def test_sites_lists_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sites", "tiny:gpt2", "--sites", "resid_post,qkv_in.0", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "resid_post.1" in out and "1x4x64" in out and "qkv_in.0" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sites", "no-such-model"], "unknown model 'no-such-model'"),
        (["sites", "tiny:llama", "--sites", "resid_pots"], "did you mean"),
        (["sites", "tiny:llama", "--sites", "mlp_out.9"], "out of range"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("actscope: error:")


def test_sites_verify_prints_the_identity_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sites", "tiny:gpt_neox", "--verify", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "0 dropped" in out
    assert "resid_post = resid_pre + attn_out + mlp_out" in out and "pass" in out
    assert "logits = lm_head(final_norm)" in out
