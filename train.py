"""Launch target for accelerate / torchrun / srun:

    accelerate launch train.py configs/train/NAME.yaml [section.field=value ...]
    torchrun --nproc_per_node N train.py configs/train/NAME.yaml ...

Identical to ``codegpt train``.
"""

import sys

from codegpt.train.signals import catch_early

if __name__ == "__main__":
    catch_early()  # a preemption signal during the imports below stops the run, cleanly
    from codegpt.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
