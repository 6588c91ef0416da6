"""One vocabulary on every command (issue 29): ``--score-threshold`` / ``--iou-threshold``
(old names accepted, hidden, with a one-line notice), ``-q/--quiet`` where progress is shown,
sizes ``WxH`` on the command line and ``(width, height)`` in Python, required flags shown as
required, and a top-level help with examples and the commands in the order a user meets them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from retinaface_tf import cli

COMMANDS = list(cli.COMMANDS)


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser(list(argv)).parse_args([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_commands_in_order_with_three_examples(capsys):
    text = _help(capsys)
    listed = [name for name in re.findall(r"^    ([a-z-]+)", text, re.M) if name in cli.COMMANDS]
    assert listed == COMMANDS
    assert COMMANDS[:4] == ["detect", "export", "evaluate", "train"]
    examples = text[text.index("examples:"):]
    assert len(re.findall(r"^  retinaface-tf ", examples, re.M)) == 3


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_speaks_one_vocabulary(capsys, command):
    text = _help(capsys, command)
    for old in ("--threshold ", "--nms-threshold", "WIDTHxHEIGHT", "WIDTH", "HEIGHT"):
        assert old not in text, f"{command} --help still shows {old!r}"
    description = text.split("\n\n")[1]
    assert description[0].isupper(), f"{command}: description should start a sentence: {description!r}"
    if command in ("detect", "evaluate", "export", "explain"):
        assert "--score-threshold T" in text
    if command in ("detect", "evaluate", "export"):
        assert "--iou-threshold T" in text
    if command in ("detect", "evaluate", "train"):
        assert "-q, --quiet" in text
    for flag in re.findall(r"(--[a-z-]+) [a-z]", text.split("options:")[0]):  # metavars are upper case
        pytest.fail(f"{command}: lower-case metavar after {flag}")


def test_required_flags_are_shown_as_required(capsys):
    usage = " ".join(_help(capsys, "train").split("\n\n")[0].split())
    assert " --output DIR " in usage and "[--output" not in usage
    text = _help(capsys, "train")
    assert "required: --label-file and --images, or --tfrecords" in text
    assert "ceil(images / batch size)" in " ".join(text.split())  # what the run does, not images // batch
    assert "videos" in " ".join(_help(capsys, "detect").split()).split("options:")[0]


@pytest.mark.parametrize("command, old, new, dest, value", [
    ("detect", "--threshold", "--score-threshold", "threshold", 0.3),
    ("explain", "--threshold", "--score-threshold", "threshold", 0.25),
    ("evaluate", "--nms-threshold", "--iou-threshold", "iou_threshold", 0.45),
    ("export", "--nms-threshold", "--iou-threshold", "iou_threshold", 0.35),
])
def test_old_flag_names_still_work_and_name_the_new_one(capsys, command, old, new, dest, value):
    argv = [command, old, str(value)] + (["--ground-truth", "gt"] if command == "evaluate" else [])
    args = cli.build_parser(argv).parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {old} is now {new}; the old name still works"]
    argv = [command, new, str(value)] + (["--ground-truth", "gt"] if command == "evaluate" else [])
    assert getattr(cli.build_parser(argv).parse_args(argv), dest) == value
    assert capsys.readouterr().err == ""


def test_sizes_are_width_by_height():
    from retinaface_tf.commands.export import default_output, parse_size
    from retinaface_tf.serving import letterbox

    assert parse_size("640x480") == (640, 480)
    assert str(default_output("tflite", "int8", parse_size("640x480"))).endswith("retinaface_int8_640x480.tflite")
    image = np.full((300, 200, 3), 7, np.uint8)  # h 300, w 200
    batch, scale = letterbox(image, (640, 480))  # (width, height)
    assert batch.shape == (1, 480, 640, 3)
    assert scale == pytest.approx(480 / 300)
    assert (batch[0, :, 320:] != 7).all() and (batch[0, :, :320] == 7).all()  # image 200*1.6 = 320 wide
