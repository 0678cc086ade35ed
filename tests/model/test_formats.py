"""Both weight layouts round-trip exactly and are the real formats: TensorFlow and transformers read them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file
from tensorflow.core.protobuf import meta_graph_pb2, saver_pb2

from app.model.formats import is_canonical
from app.model.formats.hf import canonical_name, hf_key, read_hf_model, write_hf_model
from app.model.formats.openai_tf import read_openai_model, write_openai_model
from app.model.hparams import HParams, param_shapes
from app.model.loader import OPENAI_FILES, load_weights
from app.model.random_init import random_params
from app.tokenizer.load import TokenizerFiles, gpt2_tokenizer_files
from tests.support.server_harness import TINY  # real 50257-token vocabulary

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

# torch and transformers are imported where used: see tests/support/hf_reference.py.


@pytest.fixture(scope="module")
def params(tiny_params) -> dict[str, np.ndarray]:
    return tiny_params  # tests/conftest.py's: every weight random, layer norms and biases included


@pytest.fixture(scope="module")
def bpe() -> dict[str, TokenizerFiles]:
    return {"tokenizer": gpt2_tokenizer_files()}


def assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def tiny_transformers_config() -> GPT2Config:
    from transformers import GPT2Config

    return GPT2Config(n_layer=TINY.n_layer, n_embd=TINY.n_embd, n_head=TINY.n_head, n_positions=TINY.n_ctx)


# --- round trips -------------------------------------------------------------------------------


def test_openai_round_trip_is_exact(tmp_path, params, bpe):
    write_openai_model(tmp_path, TINY, params, **bpe)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OPENAI_FILES)
    hp, loaded = read_openai_model(tmp_path)
    assert hp == TINY
    assert_same(loaded, params)
    assert all(a.dtype == np.float32 for a in loaded.values())
    assert (tmp_path / "encoder.json").read_bytes() == bpe["tokenizer"].paths[0].read_bytes()


def test_hf_round_trip_is_exact(tmp_path, params, bpe):
    write_hf_model(tmp_path, TINY, params, **bpe)
    hp, loaded = read_hf_model(tmp_path)
    assert hp == TINY
    assert_same(loaded, params)
    assert (tmp_path / "merges.txt").read_bytes() == bpe["tokenizer"].paths[1].read_bytes()
    assert (tmp_path / "vocab.json").read_bytes() == bpe["tokenizer"].paths[0].read_bytes()


@pytest.mark.parametrize("stored", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_hf_half_precision_is_converted_to_requested_dtype(tmp_path, params, bpe, stored):
    half = {name: a.astype(stored) for name, a in params.items()}
    write_hf_model(tmp_path, TINY, half, **bpe)
    _, loaded = read_hf_model(tmp_path, dtype=np.float32)
    assert_same(loaded, {name: a.astype(np.float32) for name, a in half.items()})
    assert all(a.dtype == np.float32 for a in loaded.values())


def test_writers_refuse_params_that_do_not_match_hparams(tmp_path, params, bpe):
    bad = {**params, "h0/mlp/c_fc/w": np.zeros((64, 128), np.float32)}
    with pytest.raises(ValueError, match=r"h0/mlp/c_fc/w has shape \[64, 128\], expected \[64, 256\]"):
        write_hf_model(tmp_path, TINY, bad, **bpe)


def test_hf_key_mapping_round_trips_every_name():
    names = list(param_shapes(HParams(n_layer=12)))
    assert all(is_canonical(n) for n in names)
    assert [canonical_name(hf_key(n)) for n in names] == names
    assert [canonical_name("transformer." + hf_key(n)) for n in names] == names
    assert hf_key("h3/attn/c_attn/w") == "h.3.attn.c_attn.weight"
    assert hf_key("h3/ln_2/g") == "h.3.ln_2.weight"
    assert hf_key("ln_f/b") == "ln_f.bias"
    for key in ("h.0.attn.bias", "h.0.attn.masked_bias", "lm_head.weight", "wte.bias", "h.01.ln_1.weight"):
        assert canonical_name(key) is None, key


# --- the OpenAI layout is the real TF1 bundle -------------------------------------------------


def test_openai_checkpoint_reads_with_tensorflow(tmp_path, params, bpe):
    write_openai_model(tmp_path, TINY, params, **bpe)
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt")
    reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt"))
    expected_shapes = {
        f"model/{n}": [1, *s] if n.endswith("/w") else list(s) for n, s in param_shapes(TINY).items()
    }
    assert reader.get_variable_to_shape_map() == expected_shapes
    assert set(reader.get_variable_to_dtype_map().values()) == {tf.float32}
    assert reader.get_variable_to_shape_map()["model/h0/attn/c_attn/w"] == [1, 64, 192]
    np.testing.assert_array_equal(reader.get_tensor("model/h1/mlp/c_proj/w")[0], params["h1/mlp/c_proj/w"])

    meta = meta_graph_pb2.MetaGraphDef.FromString((tmp_path / "model.ckpt.meta").read_bytes())
    assert meta.saver_def.version == saver_pb2.SaverDef.V2
    assert list(meta.meta_info_def.tags) == ["serve"]
    (filename,) = meta.graph_def.node
    assert tf.make_ndarray(filename.attr["value"].tensor) == b"model.ckpt"


def test_openai_checkpoint_loads_into_transformers(tmp_path, params, bpe):
    from transformers import GPT2Model
    from transformers.models.gpt2.modeling_gpt2 import load_tf_weights_in_gpt2

    write_openai_model(tmp_path, TINY, params, **bpe)
    config = tiny_transformers_config()
    model = load_tf_weights_in_gpt2(GPT2Model(config), config, str(tmp_path / "model.ckpt"))
    state = model.state_dict()
    for name, array in params.items():
        np.testing.assert_array_equal(state[hf_key(name)].numpy(), array, err_msg=name)


# --- the HF layout is what transformers writes and reads ----------------------------------------


def test_hf_folder_loads_with_from_pretrained(tmp_path, params, bpe):
    from transformers import GPT2LMHeadModel

    write_hf_model(tmp_path, TINY, params, **bpe)
    model, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    state = model.state_dict()
    for name, array in params.items():
        np.testing.assert_array_equal(state["transformer." + hf_key(name)].numpy(), array, err_msg=name)
    np.testing.assert_array_equal(state["lm_head.weight"].numpy(), params["wte"])  # tied
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]


def transformers_model(seed: int) -> GPT2LMHeadModel:
    """A tiny GPT2LMHeadModel whose layer norms and biases are random too (its init makes them 1 and 0)."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_transformers_config())
    with torch.no_grad():
        for key, tensor in model.transformer.state_dict().items():
            if canonical_name(key) is not None and tensor.ndim == 1:
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model


def expected_from_transformers(model: GPT2LMHeadModel) -> dict[str, np.ndarray]:
    state = model.transformer.state_dict()
    return {name: state[hf_key(name)].float().numpy() for name in param_shapes(TINY)}


def test_save_pretrained_folder_is_read(tmp_path):
    model = transformers_model(seed=0)
    model.save_pretrained(tmp_path)
    hp, loaded = load_weights(tmp_path)
    assert hp == TINY
    assert_same(loaded, expected_from_transformers(model))


def test_save_pretrained_float16_folder_is_read_as_float32(tmp_path):
    model = transformers_model(seed=1).half()
    model.save_pretrained(tmp_path)
    _, loaded = load_weights(tmp_path, dtype=np.float32)
    assert_same(loaded, expected_from_transformers(model))
    assert loaded["wte"].dtype == np.float32


def test_hub_style_keys_with_mask_buffers_and_tied_head_are_read(tmp_path, params, bpe):
    write_hf_model(tmp_path, TINY, params, **bpe)
    tensors = {f"transformer.{hf_key(n)}": a for n, a in params.items()}
    for i in range(TINY.n_layer):
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, TINY.n_ctx, TINY.n_ctx), np.float32))
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = params["wte"].copy()
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, loaded = load_weights(tmp_path)
    assert_same(loaded, params)


# --- random initialisation ---------------------------------------------------------------------


def test_random_params_follow_gpt2_init():
    hp = HParams(n_layer=8, n_embd=128, n_head=4, n_ctx=64)
    p = random_params(hp, seed=0)
    assert {n: a.shape for n, a in p.items()} == param_shapes(hp)
    assert all(a.dtype == np.float32 for a in p.values())
    assert p["wte"].std() == pytest.approx(0.02, rel=0.02)
    assert p["wpe"].std() == pytest.approx(0.01, rel=0.05)
    assert p["h0/mlp/c_fc/w"].std() == pytest.approx(0.02, rel=0.05)
    assert p["h0/attn/c_proj/w"].std() == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8)
    assert p["h0/mlp/c_proj/w"].std() == pytest.approx(0.02 / 4, rel=0.05)
    assert np.all(p["h3/ln_1/g"] == 1) and np.all(p["ln_f/b"] == 0) and np.all(p["h7/attn/c_attn/b"] == 0)


def test_random_params_are_seeded_and_ln_noise_randomises_the_rest():
    a, b, c = (random_params(TINY, seed=s) for s in (0, 0, 1))
    assert_same(a, b)
    assert not np.array_equal(a["wte"], c["wte"])
    noisy = random_params(TINY, seed=0, ln_noise=True)
    for name in ("h0/ln_1/g", "h0/ln_2/b", "h1/attn/c_attn/b", "h1/mlp/c_fc/b", "ln_f/g"):
        assert np.unique(noisy[name]).size > 1, name
    assert random_params(TINY, seed=0, dtype=np.float16)["wte"].dtype == np.float16
