"""The ``bstf`` command line.

    bstf plan --train_size=50000 --base_lr=0.1 --base_batch=128 --momentum=0.9 \\
        --milestones=60,120,160 --factor=5 --mode=increase_batch --max_batch=5120 \\
        --epochs=200 --compare --png=plan.png
    bstf find-batch-size --model=mlp --dataset=digits --png=finder.png

``bstf plan`` prints the phase table of a :class:`bstf.NoiseScalePlan` (with
``--compare``, of all three modes) and writes a PNG of learning rate, batch,
momentum and noise scale against epochs. ``bstf find-batch-size`` runs
:func:`bstf.find_batch_size` on a model and data set. Bad flags print a
one-line error and exit with status 2.
"""

import argparse
import importlib
import sys

_MODELS = ("mlp", "cnn")


def _floats(text):
    return tuple(float(x) for x in text.split(",") if x.strip())


def _plan_parser(sub):
    p = sub.add_parser("plan", help="print and plot a noise-scale plan")
    p.add_argument("--train_size", type=int, required=True, help="examples per epoch (N)")
    p.add_argument("--base_lr", type=float, required=True, help="LR at --base_batch")
    p.add_argument("--base_batch", type=int, required=True)
    p.add_argument("--momentum", type=float, default=0.9, help="base momentum m0")
    p.add_argument("--milestones", type=_floats, default=(), help="comma-separated epochs")
    p.add_argument("--factor", type=float, default=10.0, help="noise-scale reduction per milestone")
    p.add_argument("--mode", default="decay_lr", help="decay_lr | increase_batch | hybrid")
    p.add_argument("--max_batch", type=int, default=None)
    p.add_argument("--epochs", type=float, required=True)
    p.add_argument("--warmup_epochs", type=float, default=0.0)
    p.add_argument("--warmup", default="linear", help="linear (gradual) | constant")
    p.add_argument("--lr_rule", default="none", help="linear | sqrt | none (couples the LR to --batch)")
    p.add_argument("--batch", type=int, default=None, help="phase-0 batch (default --base_batch)")
    p.add_argument("--hybrid_lr_milestones", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0, help="B ∝ ε rescaling factor k")
    p.add_argument("--target_momentum", type=float, default=None, help="B ∝ 1/(1-m) rescaling")
    p.add_argument("--compare", action="store_true", help="show all three modes")
    p.add_argument("--png", default=None, help="write the plot here")
    p.set_defaults(run=_run_plan)


def _run_plan(args):
    from bstf.plan import MODES, NoiseScalePlan

    plan = NoiseScalePlan(
        train_size=args.train_size,
        base_lr=args.base_lr,
        base_batch=args.base_batch,
        base_momentum=args.momentum,
        milestones=args.milestones,
        factor=args.factor,
        mode=args.mode,
        max_batch=args.max_batch,
        warmup_epochs=args.warmup_epochs,
        warmup=args.warmup,
        lr_rule=args.lr_rule,
        batch=args.batch,
        hybrid_lr_milestones=args.hybrid_lr_milestones,
        scale=args.scale,
        target_momentum=args.target_momentum,
    )
    plans = [plan] + ([plan.with_mode(m) for m in MODES if m != plan.mode] if args.compare else [])
    for p in plans:
        print(p.table(args.epochs))
        print()
    if args.png:
        plan.plot(args.epochs, args.png, others=plans[1:])
        print(f"wrote {args.png}")


def _finder_parser(sub):
    p = sub.add_parser("find-batch-size", help="measure throughput and noise scale, recommend a batch")
    p.add_argument("--model", default="mlp",
                   help="'mlp', 'cnn', or 'package.module:function' returning a compiled keras.Model "
                        "(called with input_shape and num_classes)")
    p.add_argument("--dataset", default="digits", help="a bstf.data.load name (default: digits, offline)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--min_batch", type=int, default=8)
    p.add_argument("--max_batch", type=int, default=None)
    p.add_argument("--num_updates", type=int, default=10)
    p.add_argument("--base_lr", type=float, default=None)
    p.add_argument("--base_batch", type=int, default=None)
    p.add_argument("--lr_rule", default="linear")
    p.add_argument("--noise_scale", type=float, default=None, help="skip measuring B_noise")
    p.add_argument("--png", default=None)
    p.set_defaults(run=_run_finder)


def build_model(name, input_shape, num_classes, learning_rate=0.05):
    """A small compiled model by name ("mlp", "cnn") or a 'module:function' factory."""
    import keras

    if ":" in name:
        module, _, fn = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model={name!r}: cannot import {fn!r} from {module!r} ({e}).") from None
        return factory(input_shape=input_shape, num_classes=num_classes)
    if name not in _MODELS:
        raise ValueError(f"--model must be one of {_MODELS} or 'module:function', got {name!r}.")
    inputs = keras.Input(input_shape)
    if name == "mlp":
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(128, activation="relu")(x)
        x = keras.layers.Dense(128, activation="relu")(x)
    else:
        x = inputs if len(input_shape) == 3 else keras.layers.Reshape((*input_shape, 1))(inputs)
        conv = keras.layers.Conv2D if len(input_shape) >= 2 else keras.layers.Conv1D
        x = conv(32, 3, activation="relu", padding="same")(x)
        x = conv(32, 3, activation="relu", padding="same")(x)
        x = keras.layers.GlobalAveragePooling2D()(x) if len(input_shape) >= 2 else keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.SGD(learning_rate, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _run_finder(args):
    from bstf import data as bdata
    from bstf.finder import find_batch_size

    train = bdata.load(args.dataset, split="train", data_dir=args.data_dir)
    model = build_model(args.model, train.input_shape, train.num_classes)
    report = find_batch_size(
        model,
        train,
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        num_updates=args.num_updates,
        noise_scale=args.noise_scale,
        base_lr=args.base_lr,
        base_batch=args.base_batch,
        lr_rule=args.lr_rule,
        verbose=1,
    )
    print(report.summary())
    if args.png:
        report.plot(args.png)
        print(f"wrote {args.png}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"bstf: error: {message}\n")


def main(argv=None):
    parser = _Parser(prog="bstf", description="Batch-size engineering for TensorFlow/Keras.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _plan_parser(sub)
    _finder_parser(sub)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"bstf {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
