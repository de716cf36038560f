"""Catalogue of bad inputs, family "outputs" (issue 17, section 6): nothing a tool writes destroys what is already
there.

- ``predict.py output_dir=``: writes only into a folder that is new, empty or one of its own (marked by
  ``.seg_template_predict``) or the run's own; a folder whose ``masks/ color/ overlay/ submission/`` hold files
  predict did not write (a dataset root: its ground truth), or that holds anything else (the input folder, a
  folder of photos, the runs folder), is refused before anything is read or written.
- ``export.py output_file=``: an ``.onnx`` name, never the checkpoint being exported (same path or same file
  through a link), never an existing file that is not an earlier export (another tool's ONNX model included).
- ``scripts/compute_class_weights.py --out``: checked before any mask is read (suffix, a folder that can take
  the file, an existing file only if it is a class-weights file); ``--split`` is one of the splits.
- ``scripts/write_synthetic.py --out``: the split's folders new or empty, ``--split`` a plain folder name;
  ``scripts/gpu_check.py --out``: a new or empty folder, or one it wrote before.

All cases run in-process. The table: ``pytest tests/test_bad_inputs_outputs.py -rA -v``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from seg_template.cli import user_message
from seg_template.errors import ConfigError
from seg_template.predict import run_predict
from seg_template.predict_outputs import MARKER
from tests.bad_input_files import PREDICT, Workspace, assert_short_named, raised_user_error
from tests.helpers import importable, load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture
def workspace(compose_cfg, tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "files", compose_cfg)
    ws.root.mkdir()
    return ws


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- predict's output folder
def predict(compose_cfg, workspace: Workspace, input_: str, output_dir: Path):
    cfg = compose_cfg("predict", [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}", f"input={input_}",
                                  f"output_dir={output_dir}"], output_dir=output_dir.parent / "run")
    return run_predict(cfg, overrides=[])


@pytest.mark.parametrize("layout", ["dataset_root", "colour_masks", "masks_is_a_file"])
def test_predict_never_writes_over_files_it_did_not_write(compose_cfg, workspace, layout):
    root = Path(workspace["folder"])  # images/{train,val} + masks/{train,val}: a dataset and its ground truth
    if layout == "colour_masks":  # a folder of someone's colour renderings
        (root / "masks").rename(root / "color")
    elif layout == "masks_is_a_file":
        for mask in sorted((root / "masks").rglob("*.png"), reverse=True):
            mask.unlink()
        for split in ("train", "val"):
            (root / "masks" / split).rmdir()
        (root / "masks").rmdir()
        (root / "masks").write_text("a list of masks, not a folder")
    before = files(root)
    err = raised_user_error(lambda: predict(compose_cfg, workspace, f"{root}/images", root))
    assert isinstance(err, ConfigError)  # was: exit 0, every masks/{train,val}/*.png replaced by a prediction
    folder = {"dataset_root": r"masks/", "colour_masks": r"color/", "masks_is_a_file": r"masks \(not a folder\)"}
    assert_short_named(user_message(err), rf"output_dir={re.escape(str(root))} holds {folder[layout]} with files "
                                          r"predict did not write.*new or empty folder")
    assert files(root) == before and not (root / MARKER).exists()


def test_predict_writes_again_into_its_own_output_folder(compose_cfg, workspace, tmp_path):
    out = tmp_path / "predictions"
    first = predict(compose_cfg, workspace, workspace["images"], out)
    second = predict(compose_cfg, workspace, workspace["images"], out)  # its own (marked) folder: allowed
    assert first == second and (out / MARKER).is_file()



@pytest.mark.parametrize("where", ["a_folder_of_notes", "the_input_folder", "the_runs_folder"])
def test_predict_never_writes_into_a_folder_that_holds_other_things(compose_cfg, workspace, tmp_path, where):
    """The README's rule: new, empty or predict's own. A folder of the user's files, the input folder itself
    and the parent of the run folders were written into (exit 0, masks/ color/ overlay/ among them)."""
    elsewhere = {"a_folder_of_notes": tmp_path / "notes", "the_input_folder": Path(workspace["images"]),
                 "the_runs_folder": tmp_path / "logs" / "train" / "runs"}[where]
    if where != "the_input_folder":  # that one holds the images (the workspace is shared: nothing added there)
        elsewhere.mkdir(parents=True)
        (elsewhere / "notes.txt").write_text("kept")
    before = files(elsewhere)
    err = raised_user_error(lambda: predict(compose_cfg, workspace, workspace["images"], elsewhere))
    assert isinstance(err, ConfigError)
    assert_short_named(user_message(err), rf"output_dir={re.escape(str(elsewhere))} already holds \S")
    assert files(elsewhere) == before and not (elsewhere / "masks").exists()


def test_a_link_in_predict_s_own_folder_is_replaced_not_written_through(compose_cfg, workspace, tmp_path):
    out = tmp_path / "predictions"
    written = predict(compose_cfg, workspace, workspace["images"], out)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"someone's file")
    written[0].unlink()
    written[0].symlink_to(victim)
    predict(compose_cfg, workspace, workspace["images"], out)
    assert victim.read_bytes() == b"someone's file" and not written[0].is_symlink()


# ---------------------------------------------------------------- export's output file
needs_onnx = pytest.mark.skipif(not all(importable(m) for m in ("onnx", "onnxruntime", "onnxscript")),
                                reason="needs the onnx extra")


def export(compose_cfg, workspace: Workspace, output_file: Path | str, ckpt: str | None = None):
    from seg_template.export import run_export

    overrides = [f"ckpt_path={ckpt or workspace['good']}", f"output_file={output_file}",
                 "export.check_shapes=[[1,32,32]]", "export.threads=1"]
    return run_export(compose_cfg("export", overrides, output_dir=workspace.root / "export"), overrides=overrides)


def small_onnx(path: Path, ours: bool = True) -> None:
    """A valid ONNX model; ``ours``: with the recipe metadata export writes (else another tool's model)."""
    import onnx
    from onnx import TensorProto, helper

    from seg_template.onnx_model import RECIPE_KEY

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    if ours:
        helper.set_model_props(model, {RECIPE_KEY: "{}"})
    onnx.save(model, str(path))


@needs_onnx
@pytest.mark.parametrize(("target", "culprit"), [
    ("the_checkpoint", r"output_file=.*good: export writes an ONNX model, so the name must end in \.onnx"),
    ("a_link_to_the_checkpoint", r"output_file=.*link\.onnx is the checkpoint being exported \(ckpt_path="),
    ("notes.txt", r"output_file=.*notes\.txt: export writes an ONNX model.*\.onnx"),
    ("notes.onnx", r"notes\.onnx exists and is not a model export\.py wrote .*so export would replace it"),
    ("production.onnx", r"production\.onnx exists and is not a model export\.py wrote \(no seg_template recipe"),
    ("a_folder.onnx", r"a_folder\.onnx is a folder"),
    ("notes_beside.onnx", r"notes_beside\.unverified\.onnx exists and is not a model export\.py wrote"),
    ("under_a_file", r"notes\.txt cannot be written"),
], ids=lambda v: v if "\\" not in v and " " not in v else "")
def test_export_never_replaces_a_file_of_another_kind(compose_cfg, workspace, tmp_path, target, culprit):
    ckpt = Path(workspace["good"])
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "notes.onnx").write_text("my notes\n")
    (tmp_path / "notes_beside.unverified.onnx").write_text("my notes\n")
    (tmp_path / "a_folder.onnx").mkdir()
    small_onnx(tmp_path / "production.onnx", ours=False)  # another tool's model: valid ONNX, not ours
    (tmp_path / "link.onnx").symlink_to(ckpt)
    path = {"the_checkpoint": ckpt, "a_link_to_the_checkpoint": tmp_path / "link.onnx",
            "under_a_file": tmp_path / "notes.txt" / "model.onnx"}.get(target, tmp_path / target)
    before = {**files(tmp_path), "ckpt": ckpt.read_bytes()}
    err = raised_user_error(lambda: export(compose_cfg, workspace, path))
    assert isinstance(err, ConfigError)  # was: exit 0, best.ckpt / notes.txt replaced by ONNX bytes
    assert_short_named(user_message(err), culprit)
    assert {**files(tmp_path), "ckpt": ckpt.read_bytes()} == before


@needs_onnx
def test_export_replaces_an_earlier_export(tmp_path):
    from seg_template.export import check_output_file

    small_onnx(tmp_path / "model.onnx")
    assert check_output_file(tmp_path / "model.onnx", tmp_path / "best.ckpt") == tmp_path / "model.onnx"
    assert check_output_file(tmp_path / "new" / "m.onnx", tmp_path / "best.ckpt") == tmp_path / "new" / "m.onnx"


# ---------------------------------------------------------------- compute_class_weights --out / --split
@pytest.fixture
def weights_tool(monkeypatch):
    """The script, whose scan records that it ran (every refusal must come before it)."""
    tool = load_script("compute_class_weights")
    scanned = []
    real = tool.pixel_statistics

    def counting(*args, **kwargs):
        scanned.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(tool, "pixel_statistics", counting)
    tool.scanned = scanned
    return tool


SYNTHETIC = ["data=synthetic", "data.train_set.length=4", "data.train_set.image_size=[32,32]"]


@pytest.mark.parametrize(("out", "culprit"), [
    ("model.json", r"--out .*model\.json exists and is not a class-weights file .*never overwritten"),
    ("notes.txt", r"--out .*notes\.txt exists and is not a class-weights file"),
    ("weights", r"--out .*weights: the suffix '' is none of \.json, \.npy, \.txt"),
    ("w.csv", r"--out .*w\.csv: the suffix '\.csv' is none of"),
    ("folder.json", r"--out .*folder\.json is a folder"),
    ("notes.txt/w.json", r"--out .*notes\.txt is a file, not a folder"),
], ids=lambda v: v if "\\" not in v and " " not in v else "")
def test_class_weights_out_is_checked_before_the_scan(weights_tool, tmp_path, capsys, out, culprit):
    from seg_template.errors import run_tool

    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "model.json")  # a checkpoint, misnamed
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "weights").mkdir()
    before = files(tmp_path)
    assert run_tool(lambda: weights_tool.main([*SYNTHETIC, "--out", str(tmp_path / out)])) == 1
    assert_short_named(capsys.readouterr().err, rf"ConfigError: {culprit}")
    assert not weights_tool.scanned and files(tmp_path) == before  # was: scanned, then overwritten or a late error


def test_class_weights_replace_an_earlier_weights_file(weights_tool, tmp_path):
    out = tmp_path / "w.txt"
    out.write_text("1.0\n2.0\n")
    assert weights_tool.main([*SYNTHETIC, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 6 and weights_tool.scanned


def test_class_weights_split_is_one_of_the_splits(weights_tool, tmp_path, capsys):
    from seg_template.errors import run_tool

    with pytest.raises(SystemExit) as exit_:  # was: KeyError: 'the data config has no nosuch_set' (a traceback)
        weights_tool.main([*SYNTHETIC, "--split", "nosuch", "--out", str(tmp_path / "w.json")])
    assert exit_.value.code == 2 and "argument --split: invalid choice: 'nosuch'" in capsys.readouterr().err
    assert run_tool(lambda: weights_tool.main([*SYNTHETIC, "data.test_set=null", "--split", "test",
                                               "--out", str(tmp_path / "w.json")])) == 1
    assert_short_named(capsys.readouterr().err, r"--split test: this data config has no test split")
    assert not weights_tool.scanned and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- write_synthetic --out / --split
@pytest.mark.parametrize(("split", "culprit"), [
    ("train", r"--out .*images/train is not a new or empty folder"),
    ("../escape", r"--split '\.\./escape': expected a plain folder name"),
])
def test_write_synthetic_never_writes_over_a_dataset(tmp_path, capsys, split, culprit):
    from seg_template.errors import run_tool

    tool = load_script("write_synthetic")
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "train_000000.png").write_bytes(b"a user's own image")
    before = files(tmp_path)
    assert run_tool(lambda: tool.main(["--out", str(tmp_path), "--split", split, "--length", "2"])) == 1
    assert_short_named(capsys.readouterr().err, rf"ConfigError: {culprit}")
    assert files(tmp_path) == before and not (tmp_path / "escape").exists()  # was: overwritten without a word


def test_write_synthetic_adds_a_new_split_beside_others(tmp_path):
    tool = load_script("write_synthetic")
    tool.main(["--out", str(tmp_path), "--split", "train", "--length", "2", "--image-size", "16"])
    tool.main(["--out", str(tmp_path), "--split", "val", "--length", "2", "--image-size", "16"])
    assert len(list((tmp_path / "masks").rglob("*.png"))) == 4


# ---------------------------------------------------------------- gpu_check --out
def test_gpu_check_out_is_new_empty_or_its_own(tmp_path, capsys):
    tool = load_script("gpu_check")
    (tmp_path / "mine.txt").write_text("a user's notes\n")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--out", str(tmp_path), "--only", "imports"])
    assert exit_.value.code == 2 and "not a new or empty folder" in capsys.readouterr().err
    assert files(tmp_path) == {"mine.txt": b"a user's notes\n"}
    own = tmp_path / "checks"
    assert tool.main(["--out", str(own), "--only", "imports"]) == 0
    assert tool.main(["--out", str(own), "--only", "imports"]) == 0  # its own folder: written again
