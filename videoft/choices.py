"""Every allowed value of a choice-valued setting, in one dependency-free module.

The components (decoder, backbones, weights, freezing, training) import their choices from
here and so does the config validator, so a list is written once and the config can be
checked before torch, decord or pytorchvideo are imported.
"""
from __future__ import annotations

DECODERS = ("auto", "decord", "pyav")                      # videoft.data.decode
EVAL_CROPS = (1, 3)                                        # videoft.data.transforms.EvalPreset
PRETRAINED = ("kinetics400",)                              # videoft.models.backbones (None: no download)
ON_MISSING_WEIGHTS = ("error", "random")                   # videoft.models.weights
INPUT_FRAMES = ("rgb", "residual")                         # videoft.models.classifier: model.input
AUTO_STAGE = "auto"  # model.feature_stage: the solved linear probe keeps the stage with the lowest held-out loss
BN_MODES = ("frozen", "all", "train")                      # videoft.models.freezing
OPTIMIZERS = ("sgd", "adamw")                              # videoft.recipe
AMP_MODES = ("auto", "bf16", "fp16", "off")                # videoft.engine.train.amp_dtype_for, engine.autotune
LAYOUTS = ("auto", "on", "off")                             # train.channels_last (engine.autotune)
BEST_METRICS = ("mean_class_accuracy", "top1", "video_top1", "video_mean_class_accuracy")  # engine.evaluate
PROBE_SOLVERS = ("lbfgs", "sgd")                            # videoft.engine.probe (lbfgs) or the epoch loop (sgd)
BEST_CHECKPOINTS = ("auto", "best", "last")                # videoft.recipe: what best.pt holds


def weights_source_problem(pretrained: str | None, weights: str | None) -> str | None:
    """The one rule about where backbone weights come from; a message when it is broken, else None."""
    if pretrained is not None and pretrained not in PRETRAINED:
        return f"model.pretrained={pretrained!r} is not one of {[None, *PRETRAINED]}"
    if pretrained is not None and weights is not None:
        return (f"model.pretrained ({pretrained!r}) and model.weights ({weights!r}): give one, not both "
                "(pretrained downloads the official checkpoint, weights reads a file or URL)")
    return None
