"""The ``dapt`` command: LightningCLI (fit/validate/test/predict) plus ``dapt data``, ``demo`` and ``sweep``."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.cache import ensure_writable_dir
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_info import LoggedSaveConfig
from dapt_lightning.checkpoint_io import SafeCheckpointIO
from dapt_lightning.data.datamodule import DAPTDataModule
from dapt_lightning.module import DAPTModule
from dapt_lightning.protocol import official_max_epochs
from dapt_lightning.runs import RunCLIMixin

DEFAULT_LOGGER = {"class_path": "dapt_lightning.loggers.DAPTWandbLogger"}
# The DataModule shards data itself (exact evaluation, DDP equal to one process): Lightning must not re-wrap it.
TRAINER_DEFAULTS = {"logger": DEFAULT_LOGGER, "use_distributed_sampler": False}


class DAPTCLI(RunCLIMixin, LightningCLI):
    """LightningCLI with class names linked from data to model, the prototype callback, and protocol defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classnames", "model.classnames", apply_on="instantiate")
        parser.add_lightning_class_args(PrototypeCallback, "prototypes")
        # A last.ckpt after every training epoch, whatever the validation interval, so a killed run resumes.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_on_train_epoch_end": True})
        self.add_run_arguments(parser)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        seed = config.get("seed_everything")
        if config.data.seed is None and isinstance(seed, int) and not isinstance(seed, bool):
            config.data.seed = seed
        if config.trainer.max_epochs is None:
            config.trainer.max_epochs = official_max_epochs(config.data.dataset, config.data.num_shots)
        self.prepare_run(config, self.subcommand)
        if config.trainer.default_root_dir:
            ensure_writable_dir(config.trainer.default_root_dir, "--trainer.default_root_dir")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # Atomic saves and weights_only loads, unless the user configured their own checkpoint I/O.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer


def cli_main(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> DAPTCLI:
    """Build (and by default run) the LightningCLI; tests call this with an argument list."""
    return DAPTCLI(
        DAPTModule,
        DAPTDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=LoggedSaveConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


# Errors raised for bad settings, files or numbers: shown as one message, not a traceback (DAPT_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, OSError, RuntimeError, FloatingPointError)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``dapt`` console script."""
    try:
        _dispatch(args)
    except USER_ERRORS as error:
        if os.environ.get("DAPT_DEBUG"):
            raise
        print(f"dapt: error: {error}\n(set DAPT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _dispatch(args: list[str] | None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] == "data":
        from dapt_lightning.data.cli import data_main

        raise SystemExit(data_main(argv[1:]))
    if argv and argv[0] == "demo":
        from dapt_lightning.demo import demo_main

        raise SystemExit(demo_main(argv[1:]))
    if argv and argv[0] == "sweep":
        from dapt_lightning.sweep import sweep_main

        raise SystemExit(sweep_main(argv[1:]))
    cli_main(None if args is None else argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
