"""``python export.py ckpt_path=<ckpt> [overrides]``: write model.onnx, checked against PyTorch (see seg_template/export.py)."""

from seg_template.export import main

if __name__ == "__main__":
    main()
