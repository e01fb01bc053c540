"""``python -m dapt_lightning.bench``."""

from dapt_lightning.bench.runner import main

main()
