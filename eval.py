"""``python eval.py ckpt_path=<ckpt> [overrides]``: score a checkpoint (see seg_template/eval.py)."""

from seg_template.eval import main

if __name__ == "__main__":
    main()
