"""`gpt2-serve train`: fine-tune a model on text, keeping the optimizer state in checkpoints.

Checkpoints go to ``CHECKPOINT_DIR/RUN_NAME`` (weights, optimizer slots, step); ``losses.csv``
beside them logs every step. ``--restore-from latest`` (the default) continues a run exactly where
it stopped; Ctrl-C saves before exiting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.model_dir_arg import model_dir_arg
from app.model.default_model import DEFAULT_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model on text", description=__doc__)
    p.add_argument("--dataset", required=True, help="text file, folder, glob, or .npz from `encode`")
    p.add_argument("--model", default=DEFAULT_NAME, help="model to start from (name or folder)")
    p.add_argument("--models-dir", default="model_store")
    p.add_argument("--run-name", default="run1")
    p.add_argument("--checkpoint-dir", default="checkpoint")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--accumulate-gradients", type=int, default=1)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--only-train-transformer-layers", action="store_true")
    p.add_argument("--steps", type=int, required=True, help="train until the run has this many steps")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--sample-length", type=int, default=100)
    p.add_argument("--sample-num", type=int, default=1)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument(
        "--val-dataset", default=None, help="held-out text; default: the last --val-fraction of --dataset"
    )
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--val-every", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--restore-from", default="latest", help="latest | fresh | a checkpoint path")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default="float32")
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="train on windows this long (memory saver for the big sizes; default n_ctx)",
    )
    p.add_argument("--combine", type=int, default=50000)
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--xla", action="store_true", help="compile the training step with XLA")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from app.train.trainer import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size,
        accumulate_gradients=args.accumulate_gradients,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        only_train_transformer_layers=args.only_train_transformer_layers,
        context=args.context,
        precision=args.precision,
        seed=args.seed,
        save_every=args.save_every,
        sample_every=args.sample_every,
        sample_length=args.sample_length,
        sample_num=args.sample_num,
        top_k=args.top_k,
        val_every=args.val_every,
        val_batches=args.val_batches,
        jit_compile=args.xla,
    )


def _datasets(args: argparse.Namespace, enc):
    """(training sampler, validation sampler or None)."""
    from app.train.data import Sampler, load_chunks

    train = Sampler(
        load_chunks(args.dataset, enc, combine=args.combine, encoding=args.encoding), seed=args.seed
    )
    val = None
    if args.val_dataset:
        val = Sampler(
            load_chunks(args.val_dataset, enc, combine=args.combine, encoding=args.encoding),
            seed=args.seed + 1,
        )
    elif args.val_fraction > 0:
        train, val = train.split(args.val_fraction)
    return train, val


def run(args: argparse.Namespace) -> int:
    from app.model.loader import load_weights
    from app.tokenizer.load import load_tokenizer
    from app.train.trainer import Trainer, write_run_info

    model_dir = model_dir_arg(args.model, args.models_dir)
    cfg = _config(args)
    enc = load_tokenizer(model_dir)
    hp, params = load_weights(model_dir)
    train, val = _datasets(args, enc)
    print(
        f"dataset: {train.total:,} training tokens" + (f", {val.total:,} validation tokens" if val else ""),
        file=sys.stderr,
    )
    run_dir = Path(args.checkpoint_dir) / args.run_name
    trainer = Trainer(hp, params, cfg, run_dir)
    restored = trainer.restore(args.restore_from)
    print(
        f"run {run_dir}: {'restored ' + restored if restored != 'fresh' else 'starting fresh'} "
        f"at step {int(trainer.step.numpy())}",
        file=sys.stderr,
    )
    from app.keywords.dataset import read_spec
    from app.tokenizer.load import tokenizer_files

    write_run_info(
        run_dir,
        hp=hp,
        source=str(model_dir),
        dataset=args.dataset,
        cfg=cfg,
        keywords=read_spec(args.dataset),
        tokenizer=tokenizer_files(model_dir),
    )

    def show(step: int, samples: list[list[int]]) -> None:
        for i, ids in enumerate(samples, 1):
            print(f"\n======== SAMPLE {i} at step {step} ========\n{enc.decode(ids)}\n", file=sys.stderr)

    try:
        trainer.fit(train, steps=args.steps, val=val, on_sample=show, eot=enc.eot_token)
    except KeyboardInterrupt:
        print(f"\ninterrupted: saved {trainer.manager.latest_checkpoint}", file=sys.stderr)
        return 130
    print(f"saved {trainer.manager.latest_checkpoint}")
    return 0
