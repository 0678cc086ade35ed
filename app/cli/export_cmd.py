"""`gpt2-serve export RUN --name NAME`: a training run's weights as a servable model folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a training run as a model folder with a model card", description=__doc__
    )
    p.add_argument("run", help="run name (in --checkpoint-dir) or a run folder")
    p.add_argument("--name", required=True, help="folder name in --models-dir")
    p.add_argument("--checkpoint-dir", default="checkpoint")
    p.add_argument("--models-dir", default="model_store")
    p.add_argument("--samples", type=int, default=3, help="samples to put in the model card")
    p.add_argument("--sample-length", type=int, default=60)
    p.add_argument("--prompt", default="", help="context of the card's samples (default: unconditional)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.train.export import export_weights, write_model_card

    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.checkpoint_dir) / args.run
    dest = export_weights(run_dir, args.name, args.models_dir)
    texts = _samples(dest, args) if args.samples else []
    write_model_card(dest, run_dir, args.name, texts)
    print(f"exported {run_dir} to {dest}")
    return 0


def _samples(dest: Path, args: argparse.Namespace) -> list[str]:
    """The card's samples: what the exported folder itself produces, through the serving engine."""
    from app.engine.batcher import generate
    from app.engine.sampling import SamplingParams
    from app.engine.spec import GenerationSpec
    from app.runtime.load import load_model

    model = load_model(dest, slots=args.samples)
    enc = model.encoder
    context = enc.encode(args.prompt) if args.prompt else [enc.eot_token]
    seqs = [
        GenerationSpec(context, args.sample_length, SamplingParams(top_k=40, seed=i))
        for i in range(args.samples)
    ]
    done = generate(model.engine, seqs, eos_id=enc.eot_token)
    return [args.prompt + enc.decode([t for t in s.generated if t != enc.eot_token]) for s in done]
