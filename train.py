"""Launch target for accelerate / torchrun / srun:

    accelerate launch train.py configs/train/NAME.yaml [section.field=value ...]
    torchrun --nproc_per_node N train.py configs/train/NAME.yaml ...

Identical to ``codegpt train``.
"""

import sys

from codegpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
