"""`loraplex make-model` and `python -m loraplex.modelgen`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.platform.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> int:
    return main(["make-model", *args])


def python_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_make_model_writes_a_model_folder(tmp_path, capsys):
    out = tmp_path / "model"
    assert run_cli("--preset", "tiny", "--out", str(out), "--arch", "mistral", "--seed", "3") == 0
    assert "wrote tiny mistral model (seed 3)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_make_model_writes_the_moe_architectures(tmp_path, capsys, arch):
    out = tmp_path / arch
    assert run_cli("--preset", "tiny", "--out", str(out), "--arch", arch) == 0
    assert f"wrote tiny {arch} model" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch
    assert config["num_experts_per_tok"] == (2 if arch == "mixtral" else 4)


def test_a_preset_of_one_architecture_defaults_to_it_and_refuses_others(
    tmp_path, capsys, monkeypatch
):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--preset", "mixtral-8x7b", "--out", str(tmp_path / "m"), "--arch", "llama")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "preset 'mixtral-8x7b' has no 'llama' variant; it describes mixtral" in err
    assert not (tmp_path / "m").exists()

    import loraplex.modelgen.writer as writer

    made = {}
    monkeypatch.setattr(
        writer, "make_model", lambda preset, out, *, arch, **_: made.update(arch=arch)
    )
    assert run_cli("--preset", "mixtral-8x7b", "--out", str(tmp_path / "n")) == 0
    assert made == {"arch": "mixtral"}


def test_dtype_option_sets_the_weight_dtype(tmp_path):
    out = tmp_path / "model"
    assert run_cli("--preset", "tiny", "--out", str(out), "--dtype", "float16") == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_non_empty_out_needs_force(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--preset", "tiny", "--out", str(out))
    assert exit_info.value.code == 2
    assert "non-empty folder; pass --force" in capsys.readouterr().err
    assert not (out / "config.json").exists()

    assert run_cli("--preset", "tiny", "--out", str(out), "--force") == 0
    assert (out / "model.safetensors").exists()
    assert (out / "README.md").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--preset", "tiny", "--arch", "gpt2"], "argument --arch: invalid choice: 'gpt2'"),
        (["--preset", "tiny", "--dtype", "int4"], "argument --dtype: invalid choice: 'int4'"),
        (["--preset", "tiny", "--seed", "-2"], "must be non-negative"),
        (["--preset", "tiny", "--seed", "x"], "not an integer"),
        (["--preset", "tiny", "--device", "tpu"], "device"),
        (["--arch", "llama"], "the following arguments are required: --preset"),
    ],
)
def test_bad_arguments_exit_with_a_message(tmp_path, capsys, args, message):
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--out", str(out), *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "loraplex make-model: error:" in err and message in err
    assert not out.exists()


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_importing_the_cli_loads_neither_torch_nor_the_web_stack():
    code = (
        "import sys, loraplex.platform.cli as cli; cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_python_dash_m_runs_the_same_command(tmp_path):
    out = tmp_path / "model"
    command = [sys.executable, "-m", "loraplex.modelgen", "--preset", "tiny", "--out", str(out)]
    result = subprocess.run(
        [*command, "--arch", "qwen2"], env=python_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    again = subprocess.run(command, env=python_env(), capture_output=True, text=True)
    assert again.returncode == 2
    assert "python -m loraplex.modelgen: error: --out" in again.stderr
