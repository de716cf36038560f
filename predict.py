"""``python predict.py ckpt_path=<ckpt> input=<images>``: write masks (see seg_template/predict.py)."""

from seg_template.predict import main

if __name__ == "__main__":
    main()
