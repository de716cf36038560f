"""Our Lightning callbacks, one file per concern (the configs in ``configs/callbacks/`` name them):

- ``checkpoint.py``: ``best.ckpt`` / ``last.ckpt`` written atomically, ``last.ckpt`` always the latest, never
  non-finite weights; the safe resume check.
- ``nan_guard.py``: skip non-finite steps, stop after a few in a row with one message.
- ``stop_on_signal.py``: SIGTERM / SIGINT during fit stop after the current step, with ``last.ckpt`` written
  and the resume command printed; the process exits 143 / 130 (``seg_template/signals.py``).
- ``progress.py``: a live bar on a terminal, plain log lines elsewhere, one line per epoch.
- ``visuals.py``: image | ground truth | prediction grids of fixed validation images after each validation.
- ``reports.py``: confusion matrix (PNG + CSV), per-class IoU chart and training curves after fit / test.
- ``ema.py``: an exponential moving average of the weights (``callbacks=[default,ema]``), validated, saved
  and evaluated in their place; Lightning's ``EMAWeightAveraging`` fitted to the checkpoints and resumes.
"""
