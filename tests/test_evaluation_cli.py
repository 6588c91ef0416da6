"""``retinaface-tf evaluate`` end to end: scoring a prediction folder, running the detector on a
few real images, JSON output, the PR-curve PNG and one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from retinaface_tf.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def paths(widerface_dir):
    return {"gt": str(widerface_dir / "ground_truth"), "images": widerface_dir / "val" / "images",
            "preds": widerface_dir / "val" / "reference_predictions",
            "ref": json.loads((widerface_dir / "val" / "REFERENCE_AP.json").read_text())}


def test_scores_a_prediction_folder_with_json_and_plot(paths, tmp_path, capsys):
    plot = tmp_path / "pr.png"
    rc = main(["evaluate", "--predictions", str(paths["preds"]), "-g", paths["gt"], "--json", "--plot", str(plot)])
    out = capsys.readouterr()
    assert rc == 0
    got = json.loads(out.out)
    for s in ("easy", "medium", "hard"):
        assert got[s] == pytest.approx(paths["ref"][s], abs=1e-9)
    assert got["images"] == 310 and got["ground_truth_images"] == 3226
    assert got["faces"] == {"easy": 851, "medium": 1932, "hard": 5692}
    assert "scored 310 images (subset of 3226)" in out.err
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 20_000


def test_images_select_the_subset_and_events_filter(paths, capsys):
    rc = main(["evaluate", "--predictions", str(paths["preds"]), "--images", str(paths["images"]), "-g", paths["gt"],
               "--events", "50--Celebration_Or_Party", "--no-plot", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["images"] == 49
    assert 0.9 < got["easy"] <= 1.0


def test_errors_are_one_line_and_name_the_file(paths, tmp_path, capsys):
    assert main(["evaluate", "-g", paths["gt"], "--no-plot"]) == 2
    assert "give --images" in capsys.readouterr().err

    preds = tmp_path / "preds"
    shutil.copytree(paths["preds"] / "50--Celebration_Or_Party", preds / "50--Celebration_Or_Party")
    victim = sorted((preds / "50--Celebration_Or_Party").iterdir())[0]
    lines = victim.read_text().splitlines()
    victim.write_text("\n".join(lines[:3] + ["1 2 3"] + lines[4:]) + "\n")
    assert main(["evaluate", "--predictions", str(preds), "-g", paths["gt"], "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{victim}:4: expected 'x y w h score'" in err

    victim.unlink()
    assert main(["evaluate", "--predictions", str(preds), "--images", str(paths["images"]), "-g", paths["gt"],
                 "--events", "50--Celebration_Or_Party", "--no-plot"]) == 2
    assert f"{victim}: missing prediction file" in capsys.readouterr().err

    assert main(["evaluate", "--predictions", str(preds), "-g", paths["gt"], "--complete", "--no-plot"]) == 2
    assert "missing prediction file (and" in capsys.readouterr().err

    (preds / "77--Unknown").mkdir()
    assert main(["evaluate", "--predictions", str(preds), "-g", paths["gt"], "--no-plot"]) == 2
    assert "77--Unknown: unknown event" in capsys.readouterr().err

    assert main(["evaluate", "--predictions", str(preds), "-g", str(tmp_path), "--no-plot"]) == 2
    assert "wider_face_val.mat: missing" in capsys.readouterr().err


def test_runs_the_detector_and_saved_predictions_score_the_same(paths, tmp_path, capsys):
    event = "50--Celebration_Or_Party"
    images = tmp_path / "images" / event
    images.mkdir(parents=True)
    for src in sorted((paths["images"] / event).iterdir())[:4]:
        os.symlink(src, images / src.name)
    saved = tmp_path / "saved"
    rc = main(["evaluate", "--images", str(tmp_path / "images"), "-g", paths["gt"], "--save-predictions", str(saved),
               "--json", "--quiet", "--plot", str(tmp_path / "pr.png")])
    assert rc == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["images"] == 4 and direct["seconds_per_image"] > 0
    files = sorted((saved / event).glob("*.txt"))
    assert [f.stem for f in files] == sorted(p.stem for p in images.iterdir())
    first = files[0].read_text().splitlines()
    assert first[0] == files[0].stem and int(first[1]) == len(first) - 2 > 0
    rc = main(["evaluate", "--predictions", str(saved), "-g", paths["gt"], "--json", "--no-plot"])
    rescored = json.loads(capsys.readouterr().out)
    for s in ("easy", "medium", "hard"):
        assert rescored[s] == direct[s]
    # Matches the reference's predictions for the same four images to well under a point.
    ref_subset = tmp_path / "ref" / event
    ref_subset.mkdir(parents=True)
    for f in files:
        shutil.copy(paths["preds"] / event / f.name, ref_subset / f.name)
    main(["evaluate", "--predictions", str(tmp_path / "ref"), "-g", paths["gt"], "--json", "--no-plot"])
    ref = json.loads(capsys.readouterr().out)
    for s in ("easy", "medium", "hard"):
        assert abs(ref[s] - direct[s]) < 0.005
