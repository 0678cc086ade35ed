"""Layout detection, folder resolution, and one clear ModelFileError for every kind of bad folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from app.errors import ModelFileError
from app.model.loader import detect_layout, load_weights, resolve_model_dir
from app.tokenizer.load import tokenizer_files
from tests.support.server_harness import TINY

DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def params(tiny_params) -> dict[str, np.ndarray]:
    return tiny_params


@pytest.fixture(scope="module")
def written(tiny_dirs) -> dict[str, Path]:
    """One good folder per layout (tests/conftest.py's, shared: tests that break a folder break a copy)."""
    return {"openai": tiny_dirs["openai"], "hf": tiny_dirs["hf"]}


@pytest.fixture
def openai_dir(tmp_path, written) -> Path:
    return Path(shutil.copytree(written["openai"], tmp_path / "openai"))


@pytest.fixture
def hf_dir(tmp_path, written) -> Path:
    return Path(shutil.copytree(written["hf"], tmp_path / "hf"))


def load_error(model_dir: Path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        load_weights(model_dir)
    return info.value


def resave_checkpoint(model_dir: Path, changes: dict[str, np.ndarray | None]) -> None:
    """Rewrite model.ckpt with some tensors replaced (array), added (new key) or dropped (None)."""
    prefix = str(model_dir / "model.ckpt")
    reader = tf.train.load_checkpoint(prefix)
    tensors = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}
    tensors.update(changes)
    tensors = {k: v for k, v in tensors.items() if v is not None}
    for stale in model_dir.glob("model.ckpt.*"):
        if stale.suffix != ".meta":
            stale.unlink()
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=list(tensors),
        shape_and_slices=[""] * len(tensors),
        tensors=[tf.constant(v) for v in tensors.values()],
    )


def resave_safetensors(model_dir: Path, changes: dict[str, np.ndarray | None]) -> None:
    path = str(model_dir / "model.safetensors")
    tensors = {**load_file(path), **changes}
    save_file({k: v for k, v in tensors.items() if v is not None}, path, metadata={"format": "pt"})


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- detection and loading -------------------------------------------------------------------


def test_detect_layout(written):
    assert detect_layout(written["openai"]) == "openai"
    assert detect_layout(written["hf"]) == "hf"


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_load_weights_both_layouts(written, params, layout):
    hp, loaded = load_weights(written[layout])
    assert hp == TINY
    assert loaded.keys() == params.keys()
    for name, array in params.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_load_weights_in_float16(written, params, layout):
    _, loaded = load_weights(written[layout], dtype=np.float16)
    assert loaded["h1/mlp/c_fc/w"].dtype == np.float16
    np.testing.assert_array_equal(loaded["wte"], params["wte"].astype(np.float16))


def test_empty_folder_is_no_layout(tmp_path):
    with pytest.raises(ModelFileError) as info:
        detect_layout(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: not a GPT-2 model folder")
    for expected in ("hparams.json", "model.ckpt.index", "config.json", "model.safetensors", "empty folder"):
        assert expected in message


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFileError, match="folder does not exist"):
        load_weights(tmp_path / "nope")


def test_checkpoint_file_with_a_foreign_absolute_path_still_loads(openai_dir, params):
    (openai_dir / "checkpoint").write_text('model_checkpoint_path: "/content/run1/model.ckpt"\n')
    _, loaded = load_weights(openai_dir)
    np.testing.assert_array_equal(loaded["wpe"], params["wpe"])


def test_optimizer_slots_in_a_fine_tuned_checkpoint_are_ignored(openai_dir, params):
    resave_checkpoint(openai_dir, {"model/wte/Adam": params["wte"], "global_step": np.array(7, np.int64)})
    _, loaded = load_weights(openai_dir)
    assert loaded.keys() == params.keys()


# --- OpenAI folder errors --------------------------------------------------------------------


def test_missing_hparams_json(openai_dir):
    (openai_dir / "hparams.json").unlink()
    err = load_error(openai_dir)
    assert err.path == openai_dir / "hparams.json" and err.problem == "file is missing"


def test_missing_data_file(openai_dir):
    (openai_dir / DATA).unlink()
    err = load_error(openai_dir)
    assert err.path == openai_dir / DATA and err.problem == "file is missing"


def test_missing_index_file(openai_dir):
    (openai_dir / "model.ckpt.index").unlink()
    err = load_error(openai_dir)
    assert err.path == openai_dir / "model.ckpt.index" and err.problem == "file is missing"


def test_truncated_data_file(openai_dir):
    truncate(openai_dir / DATA, keep=0.5)
    err = load_error(openai_dir)
    assert err.path == openai_dir / DATA and err.problem.startswith("truncated or corrupt")


def test_truncated_index_file(openai_dir):
    truncate(openai_dir / "model.ckpt.index", keep=0.5)
    err = load_error(openai_dir)
    assert err.path == openai_dir / "model.ckpt.index" and err.problem.startswith("truncated or corrupt")


def test_wrong_shape_names_tensor_file_and_expectation(openai_dir):
    resave_checkpoint(openai_dir, {"model/h1/mlp/c_fc/w": np.zeros((1, 64, 128), np.float32)})
    err = load_error(openai_dir)
    assert str(err) == (
        f"{openai_dir / 'model.ckpt.index'}: model/h1/mlp/c_fc/w has shape [1, 64, 128], "
        "expected [1, 64, 256] from hparams.json"
    )


def test_missing_and_unexpected_tensors_are_listed(openai_dir):
    resave_checkpoint(openai_dir, {"model/h0/ln_1/g": None, "model/h0/attn/extra": np.zeros(3, np.float32)})
    err = load_error(openai_dir)
    assert err.path.name == "model.ckpt.index"
    assert "2 problems" in err.problem
    assert "model/h0/ln_1/g is missing" in err.problem
    assert "model/h0/attn/extra is not a GPT-2 weight" in err.problem


def test_hparams_n_layer_disagreeing_with_weights(openai_dir):
    (openai_dir / "hparams.json").write_text(json.dumps({**json.loads(TINY.to_json()), "n_layer": 4}))
    err = load_error(openai_dir)
    assert err.path.name == "hparams.json"
    assert err.problem == "n_layer is 4 but model.ckpt.index holds 2 blocks (h0..h1)"


def test_hparams_n_ctx_disagreeing_with_wpe(openai_dir):
    (openai_dir / "hparams.json").write_text(json.dumps({**json.loads(TINY.to_json()), "n_ctx": 1024}))
    err = load_error(openai_dir)
    assert err.path.name == "hparams.json"
    assert err.problem == "n_ctx is 1024 but model/wpe in model.ckpt.index has shape [128, 64]"


# --- Hugging Face folder errors ----------------------------------------------------------------


def test_truncated_safetensors(hf_dir):
    truncate(hf_dir / "model.safetensors", keep=0.7)
    err = load_error(hf_dir)
    assert err.path == hf_dir / "model.safetensors" and err.problem.startswith("truncated or corrupt")


def test_missing_safetensors_mentions_pickles_are_not_read(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "pytorch_model.bin")
    err = load_error(hf_dir)
    assert err.path.name == "model.safetensors" and "pytorch_model.bin" in err.problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON (JSONDecodeError)"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"model_type": "gpt2", "n_embd": 64}), "missing key 'vocab_size'"),
        (
            json.dumps({"model_type": "bert"}),
            "model_type is 'bert'; GPT-2 has 'gpt2', the only network served",
        ),
        (json.dumps({"activation_function": "relu"}), "activation_function is 'relu'"),
    ],
)
def test_invalid_config_json(hf_dir, content, problem):
    (hf_dir / "config.json").write_text(content)
    err = load_error(hf_dir)
    assert err.path == hf_dir / "config.json"
    assert err.problem.startswith(problem)


def test_config_n_embd_not_divisible(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "n_head": 5}))
    err = load_error(hf_dir)
    assert err.path.name == "config.json" and "not divisible by n_head 5" in err.problem


def test_config_disagreeing_with_weights(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "n_embd": 128, "n_layer": 3}))
    err = load_error(hf_dir)
    assert err.path.name == "config.json"
    assert "n_layer is 3 but model.safetensors holds 2 blocks (h0..h1)" in err.problem
    assert "n_embd is 128 but wte.weight in model.safetensors has shape [50257, 64]" in err.problem


def test_hf_wrong_shape(hf_dir):
    resave_safetensors(hf_dir, {"h.0.attn.c_proj.weight": np.zeros((64, 32), np.float32)})
    err = load_error(hf_dir)
    assert err.path.name == "model.safetensors"
    assert err.problem == "h.0.attn.c_proj.weight has shape [64, 32], expected [64, 64] from config.json"


def test_untied_lm_head_is_refused(hf_dir, params):
    resave_safetensors(hf_dir, {"lm_head.weight": params["wte"] + 1})
    err = load_error(hf_dir)
    assert err.path.name == "model.safetensors"
    assert err.problem.startswith("lm_head.weight differs from wte.weight")


def test_tied_lm_head_is_accepted(hf_dir, params):
    resave_safetensors(hf_dir, {"lm_head.weight": params["wte"]})
    _, loaded = load_weights(hf_dir)
    assert "lm_head.weight" not in loaded and loaded.keys() == params.keys()


def test_both_layouts_in_one_folder_is_ambiguous(openai_dir, written):
    shutil.copy(written["hf"] / "model.safetensors", openai_dir)
    with pytest.raises(ModelFileError, match="both an OpenAI checkpoint and model.safetensors"):
        detect_layout(openai_dir)


# --- resolving names and tokenizer files -------------------------------------------------------


def test_resolve_model_dir(tmp_path):
    models = tmp_path / "models"
    (models / "124M").mkdir(parents=True)
    (models / "345M").mkdir()  # downloaded under OpenAI's first name
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    assert resolve_model_dir(elsewhere, models) == elsewhere
    assert resolve_model_dir(str(elsewhere), models) == elsewhere
    assert resolve_model_dir("124M", models) == models / "124M"
    assert resolve_model_dir("117M", models) == models / "124M"
    assert resolve_model_dir("345M", models) == models / "345M"


def test_resolve_model_dir_not_found_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        resolve_model_dir("345M", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "355M") in message and "`gpt2-serve download 355M`" in message
    with pytest.raises(FileNotFoundError) as info:
        resolve_model_dir("my-finetune", tmp_path)
    assert str(tmp_path / "my-finetune") in str(info.value) and "download" not in str(info.value)


def test_tokenizer_files(written, tmp_path):
    assert tokenizer_files(written["openai"]).paths == (
        written["openai"] / "encoder.json",
        written["openai"] / "vocab.bpe",
    )
    assert tokenizer_files(written["hf"]).paths == (
        written["hf"] / "vocab.json",
        written["hf"] / "merges.txt",
    )
    with pytest.raises(ModelFileError, match="no tokenizer"):
        tokenizer_files(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ModelFileError) as info:
        tokenizer_files(tmp_path)
    assert info.value.path == tmp_path / "merges.txt"
