"""OpenAI's GPT-2 release folder: a TF1-style checkpoint bundle read and written with TF2 only.

The folder (openai/gpt-2 ``download_model.py``) holds::

    checkpoint                       text: model_checkpoint_path: "model.ckpt"
    hparams.json                     {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}
    model.ckpt.index                 tensor names, shapes, offsets and checksums
    model.ckpt.data-00000-of-00001   the float32 tensor bytes
    model.ckpt.meta                  the training graph (not needed to read the weights)
    encoder.json, vocab.bpe          the byte-level BPE tokenizer (or a sentencepiece sp.model)

Variable names are openai/gpt-2 ``src/model.py``'s scopes: ``model/wte`` ``[n_vocab, n_embd]``,
``model/wpe`` ``[n_ctx, n_embd]``, ``model/h{i}/ln_1/g``, ``model/h{i}/attn/c_attn/w``
``[1, nx, 3nx]`` (``conv1d`` keeps a leading 1), ..., ``model/ln_f/b``. Canonical names drop the
``model/`` scope and conv weights are squeezed to ``[nx, nf]``.

Reading goes through ``tf.train.load_checkpoint`` (a ``CheckpointReader``) and writing through
``tf.raw_ops.SaveV2``, which writes exactly the bundle a TF1 ``Saver`` wrote: no ``tf.compat.v1``.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saver_pb2

from app.errors import ModelFileError
from app.model.formats import Inventory, StoredTensor, is_canonical, require_params
from app.model.hparams import HParams, param_shapes
from app.tokenizer.load import TokenizerFiles

PREFIX = "model.ckpt"
SCOPE = "model/"

# Optimizer state that fine-tuning scripts sometimes save next to the weights; not model weights.
_TRAINING_STATE = re.compile(r".*/(?:Adam|Adam_1|Momentum|RMSProp|RMSProp_1)|beta[12]_power|global_step")

# What CheckpointReader raises on bad bytes: TF's status errors, or their pybind translations
# (a truncated data file gives IndexError "Read less bytes than requested").
_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError)


def stored_tensor(name: str, shape: tuple[int, ...]) -> StoredTensor:
    """The checkpoint key and shape of canonical ``name``: conv weights gain a leading 1."""
    return StoredTensor(SCOPE + name, (1, *shape) if name.endswith("/w") else tuple(shape))


def checkpoint_prefix(model_dir: Path) -> Path:
    """The bundle prefix the ``checkpoint`` file names, or ``model.ckpt`` when it names none usable.

    The file may carry an absolute path from the machine that trained the model, so a path that
    does not exist here is retried as the same file name inside ``model_dir``.
    """
    default = model_dir / PREFIX
    try:
        text = (model_dir / "checkpoint").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return default
    match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', text, re.MULTILINE)
    if not match:
        return default
    named = Path(match.group(1))
    for candidate in (named if named.is_absolute() else model_dir / named, model_dir / named.name):
        if _index_file(candidate).is_file():
            return candidate
    return default


def _index_file(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def _data_files(prefix: Path) -> list[Path]:
    """The data shards the bundle needs; raises ModelFileError naming the first one missing."""
    found = sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}.data-?????-of-?????"))
    total = int(found[0].name.rsplit("-of-", 1)[1]) if found else 1
    shards = [prefix.with_name(f"{prefix.name}.data-{i:05d}-of-{total:05d}") for i in range(total)]
    for shard in shards:
        if not shard.is_file():
            raise ModelFileError(shard, "file is missing")
    return shards


def _open(model_dir: Path) -> tuple[Inventory, tf.train.CheckpointReader, Path]:
    """Hyperparameters, stored tensor list, an open reader and the data file (for error messages)."""
    model_dir = Path(model_dir)
    hparams_file = model_dir / "hparams.json"
    hp = HParams.from_file(hparams_file)
    prefix = checkpoint_prefix(model_dir)
    index = _index_file(prefix)
    if not index.is_file():
        raise ModelFileError(index, "file is missing")
    data_file = _data_files(prefix)[0]
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
    except _READ_ERRORS as exc:
        raise ModelFileError(index, f"truncated or corrupt ({_first_line(exc)})") from None
    tensors: dict[str, StoredTensor] = {}
    unknown: list[str] = []
    for key in sorted(shapes):
        name = key[len(SCOPE) :] if key.startswith(SCOPE) else ""
        if is_canonical(name):
            tensors[name] = StoredTensor(key, tuple(int(d) for d in shapes[key]))
        elif not _TRAINING_STATE.fullmatch(key):
            unknown.append(key)
    inventory = Inventory(hp, hparams_file, index, tensors, tuple(unknown))
    return inventory, reader, data_file


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return text.strip().splitlines()[0]


def scan_openai_model(model_dir: Path | str) -> Inventory:
    """Read ``hparams.json`` and the checkpoint index (names and shapes), not the tensor data."""
    return _open(Path(model_dir))[0]


def read_openai_model(
    model_dir: Path | str, *, dtype: npt.DTypeLike = np.float32
) -> tuple[HParams, dict[str, np.ndarray]]:
    """All GPT-2 weights of an OpenAI folder as ``{canonical_name: array}`` in ``dtype``.

    Conv weights ``[1, nx, nf]`` come back as ``[nx, nf]``. Names and shapes are not checked
    against the hyperparameters here; :func:`app.model.loader.load_weights` does that first.
    """
    inventory, reader, data_file = _open(Path(model_dir))
    params: dict[str, np.ndarray] = {}
    for name, stored in inventory.tensors.items():
        try:
            array = np.asarray(reader.get_tensor(stored.key))
        except _READ_ERRORS as exc:
            raise ModelFileError(data_file, f"truncated or corrupt ({_first_line(exc)})") from None
        if name.endswith("/w") and array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        params[name] = array.astype(dtype, copy=False)
    return inventory.hparams, params


def write_openai_model(
    dest_dir: Path | str,
    hp: HParams,
    params: Mapping[str, np.ndarray],
    *,
    tokenizer: TokenizerFiles,
) -> Path:
    """Write the seven files of an OpenAI release folder (``tokenizer``'s files as ``encoder.json`` +
    ``vocab.bpe``, or its ``sp.model``); returns ``dest_dir``.

    Tensors are stored as float32 whatever ``params``' dtype, as OpenAI's are: openai/gpt-2's
    code restores them into float32 variables.
    """
    require_params(hp, params)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    names, tensors = [], []
    for name, shape in param_shapes(hp).items():
        stored = stored_tensor(name, shape)
        names.append(stored.key)
        tensors.append(tf.constant(np.asarray(params[name], dtype=np.float32).reshape(stored.shape)))
    tf.raw_ops.SaveV2(
        prefix=str(dest / PREFIX), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
    )
    (dest / f"{PREFIX}.meta").write_bytes(_meta_graph().SerializeToString())
    (dest / "checkpoint").write_text(
        f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n', encoding="utf-8"
    )
    (dest / "hparams.json").write_text(hp.to_json(), encoding="utf-8")
    tokenizer.copy_to(dest, "openai")
    return dest


def _meta_graph() -> meta_graph_pb2.MetaGraphDef:
    """A minimal ``model.ckpt.meta``: version info and a ``SaverDef`` whose filename is ``model.ckpt``.

    OpenAI's file holds the whole training graph, but nothing reads it to restore weights
    (openai/gpt-2 rebuilds the graph in code), so only the saver's description is kept: the
    ``save/Const`` string tensor a TF1 ``Saver`` feeds its filename through.
    """
    filename = node_def_pb2.NodeDef(name="save/Const", op="Const")
    filename.attr["dtype"].type = tf.string.as_datatype_enum
    filename.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(PREFIX))
    meta = meta_graph_pb2.MetaGraphDef(
        graph_def=graph_pb2.GraphDef(node=[filename]),
        saver_def=saver_pb2.SaverDef(
            filename_tensor_name="save/Const:0",
            save_tensor_name="save/control_dependency:0",
            restore_op_name="save/restore_all",
            max_to_keep=5,
            keep_checkpoint_every_n_hours=10000.0,
            version=saver_pb2.SaverDef.V2,
        ),
    )
    meta.meta_info_def.tags.append("serve")
    meta.meta_info_def.tensorflow_version = tf.version.VERSION
    meta.meta_info_def.tensorflow_git_version = tf.version.GIT_VERSION
    return meta
