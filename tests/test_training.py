"""Training: optimizer/schedule maths, fit under MirroredStrategy (2 logical CPUs) and
MultiWorkerMirroredStrategy (2 processes), kill + resume, and errors before any step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from synthetic import make_dataset

from retinaface_tf.config import Config
from retinaface_tf.errors import TrainingError
from retinaface_tf.evaluation.validation import WiderValidation
from retinaface_tf.training import StepDecay, TorchSGD, prepare_output, train

TINY = {"data.image_size": "64", "train.batch_size": "4", "train.epochs": "3", "train.learning_rate": "0.01"}


def _run_script(code: str, *, env=None, timeout=600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "TF_CPP_MIN_LOG_LEVEL": "3",
                **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


# ---------------------------------------------------------------- maths
def test_torch_sgd_is_pytorch_update_with_coupled_decay():
    """buf = m*buf + g + wd*w ; w -= lr*buf, with a learning rate that changes between steps."""
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    var = tf.Variable(w0)
    lrs = [0.1, 0.1, 0.01, 0.01]
    sched = StepDecay(0.1, steps_per_epoch=1, decay_epochs=(2,), decay_factor=0.1)
    opt = TorchSGD(sched, momentum=0.9, coupled_weight_decay=5e-4)
    w, buf = w0.astype(np.float64), np.zeros(3)
    for step, lr in enumerate(lrs):
        g = np.array([0.3, -0.1, 0.2]) * (step + 1)
        opt.apply_gradients([(tf.constant(g, tf.float32), var)])
        buf = 0.9 * buf + g + 5e-4 * w
        w = w - lr * buf
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-5)


def test_step_decay_and_warmup():
    s = StepDecay(1e-3, steps_per_epoch=10, decay_epochs=(190, 220), decay_factor=0.1)
    assert [float(s(x)) for x in (0, 1899, 1900, 2199, 2200)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    w = StepDecay(1e-3, steps_per_epoch=10, decay_epochs=(5,), warmup_epochs=2)
    assert float(w(0)) == pytest.approx(1e-6)
    assert float(w(10)) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert float(w(20)) == pytest.approx(1e-3)


def test_serializable_classes_round_trip_through_their_config():
    """TorchSGD (with its StepDecay), StepDecay and the training model come back from
    get_config / from_config as they were, as the losses do (tests/test_losses.py)."""
    import keras

    from retinaface_tf.training import DistributedTrainingModel, build_training_model

    sched = StepDecay(2e-3, steps_per_epoch=7, decay_epochs=(3, 5), decay_factor=0.5, warmup_epochs=1)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert type(again) is StepDecay and again.get_config() == sched.get_config()
    assert [float(again(x)) for x in (0, 7, 21, 40)] == [float(sched(x)) for x in (0, 7, 21, 40)]
    opt = TorchSGD(sched, momentum=0.8, coupled_weight_decay=1e-4)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is TorchSGD and again.get_config() == opt.get_config()
    assert again.coupled_weight_decay == 1e-4 and again.get_config()["learning_rate"] == opt.get_config()["learning_rate"]

    cfg = Config.preset("mobilenet025").override(TINY)
    model = build_training_model(cfg, steps_per_epoch=5, global_batch=4)
    clone = DistributedTrainingModel.from_config(model.get_config())
    assert type(clone) is DistributedTrainingModel and clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    x = tf.random.uniform([1, 64, 64, 3], -100.0, 100.0, seed=3)
    for key, value in model(x, training=False).items():
        np.testing.assert_allclose(clone(x, training=False)[key].numpy(), value.numpy(), atol=1e-5)


# ---------------------------------------------------------------- errors before any step
def test_errors_before_any_step(tmp_path):
    cfg = Config.preset("mobilenet025").override(TINY)
    empty = tmp_path / "empty.txt"
    empty.write_text("# a.jpg\n10 10 0 0\n")  # only a zero-sized face: nothing to train on
    with pytest.raises(TrainingError, match="dataset is empty") as err:
        train(cfg, output_dir=tmp_path / "r1", label_file=empty, images_dir=tmp_path)
    assert str(empty) in str(err.value) and not (tmp_path / "r1").exists()

    label, images = make_dataset(tmp_path / "data", images=4)
    (images / "im2.jpg").unlink()
    with pytest.raises(Exception, match="im2.jpg") as err:
        train(cfg, output_dir=tmp_path / "r2", label_file=label, images_dir=images)
    assert not (tmp_path / "r2").exists()

    prepare_output(tmp_path / "r3", cfg, {"label_file": "a"})
    other = cfg.override({"train.epochs": "5"})
    with pytest.raises(TrainingError, match=r"holds a different run \(config\.train\.epochs: 3 there, 5 now\)"):
        prepare_output(tmp_path / "r3", other, {"label_file": "a"})


def test_cli_rejects_bad_override(capsys, tmp_path):
    from retinaface_tf.cli import main
    rc = main(["train", "--config", "mobilenet025", "--output", str(tmp_path / "r"), "--set", "train.batch_sise=3"])
    assert rc == 2 and "field 'train.batch_sise': unknown field" in capsys.readouterr().err


# ---------------------------------------------------------------- distribution
def test_fit_under_mirrored_strategy_on_two_cpus(tmp_path):
    label, images = make_dataset(tmp_path / "data", images=4)
    out = _run_script(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import json
        from retinaface_tf.config import Config
        from retinaface_tf.data.pipeline import build_dataset, dataset_kwargs
        from retinaface_tf.training import build_training_model
        cfg = Config.preset("mobilenet025").override({TINY!r})
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        batch = next(iter(build_dataset({str(label)!r}, {str(images)!r}, batch_size=4, training=False,
                                        **dataset_kwargs(cfg))))
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
        with strategy.scope():
            model = build_training_model(cfg, steps_per_epoch=5, global_batch=4)
        h = model.fit(ds, epochs=6, steps_per_epoch=5, verbose=0)
        print(json.dumps(h.history))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    hist = json.loads(out.stdout.strip().splitlines()[-1])
    loss = hist["loss"]
    assert all(np.isfinite(loss)) and loss[-1] < 0.5 * loss[0], loss
    assert {"bbox_loss", "classes_loss", "landmarks_loss"} <= set(hist)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow  # 20 s; MirroredStrategy on two CPUs in one process stays in the default suite
def test_multi_worker_mirrored_strategy_two_processes(tmp_path):
    label, images = make_dataset(tmp_path / "data", images=8)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        cmd = [sys.executable, "-m", "retinaface_tf.cli", "train", "--config", "mobilenet025",
               "--label-file", str(label), "--images", str(images), "--output", str(tmp_path / "run"),
               "--set", "data.image_size=64", "--batch-size", "4", "--epochs", "1", "--quiet"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "2 replica(s)" in outs[0]
    assert (tmp_path / "run" / "model.weights.h5").exists()
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + one epoch, written by the chief only


def test_killed_run_resumes_from_last_completed_epoch(tmp_path):
    label, images = make_dataset(tmp_path / "data", images=8)
    run = tmp_path / "run"
    common = f"""
        import os, signal, json, numpy as np, keras
        from retinaface_tf.config import Config
        from retinaface_tf.training import train
        cfg = Config.preset("mobilenet025").override({TINY!r})
        def state(model):
            return {{**{{"w" + str(i): v.numpy() for i, v in enumerate(model.weights)}},
                    **{{"o" + str(i): np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}}}}
    """
    first = _run_script(common + f"""
        class KillAfterFirstEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                np.savez({str(tmp_path / 'at_kill.npz')!r}, **state(self.model))
                os.kill(os.getpid(), signal.SIGKILL)
        train(cfg, output_dir={str(run)!r}, label_file={str(label)!r}, images_dir={str(images)!r},
              verbose=0, extra_callbacks=[KillAfterFirstEpoch()])
    """)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1
    second = _run_script(common + f"""
        class Probe(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                np.savez({str(tmp_path / 'at_resume.npz')!r}, **state(self.model))
            def on_epoch_begin(self, epoch, logs=None):
                print("EPOCH", epoch + 1, flush=True)
        train(cfg, output_dir={str(run)!r}, label_file={str(label)!r}, images_dir={str(images)!r},
              verbose=0, extra_callbacks=[Probe()])
    """)
    assert second.returncode == 0, second.stderr[-3000:]
    epochs = [int(line.split()[1]) for line in second.stdout.splitlines() if line.startswith("EPOCH")]
    assert epochs == [2, 3]
    at_kill, at_resume = np.load(tmp_path / "at_kill.npz"), np.load(tmp_path / "at_resume.npz")
    assert set(at_kill.files) == set(at_resume.files) and len(at_kill.files) > 300
    for k in at_kill.files:
        np.testing.assert_array_equal(at_resume[k], at_kill[k], err_msg=k)
    assert int(at_resume["o0"]) == 2  # optimizer iterations: 8 images / batch 4 = 2 steps in epoch 1
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert not (run / "backup").exists() and (run / "model.weights.h5").exists()


def test_validation_ap_is_logged_and_picks_best(tmp_path, widerface_dir):
    label, images = make_dataset(tmp_path / "data", images=4)
    cfg = Config.preset("mobilenet025").override({**TINY, "train.epochs": "2"})
    validation = WiderValidation(widerface_dir / "val" / "images", widerface_dir / "ground_truth", every=2,
                                 config=cfg, max_images=2)
    history = train(cfg, output_dir=tmp_path / "run", label_file=label, images_dir=images, verbose=0,
                    validation=validation)
    hard = history.history["val_hard_ap"]
    assert len(hard) == 2 and np.isnan(hard[0]) and 0.0 <= hard[1] <= 1.0  # evaluated at epoch 2 only
    header, *rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert {"val_easy_ap", "val_medium_ap", "val_hard_ap", "learning_rate", "bbox_loss"} <= set(header.split(","))
    assert len(rows) == 2
    assert (tmp_path / "run" / "best.weights.h5").exists() and (tmp_path / "run" / "model.weights.h5").exists()


def test_learning_rate_logger_logs_the_rate_of_the_epochs_last_step():
    """At the end of the epoch before a decay, the optimizer's ``learning_rate`` property already
    gives the decayed rate (it evaluates the schedule at ``iterations``, the next step); the log
    must give the rate the epoch's steps used."""
    from types import SimpleNamespace

    from retinaface_tf.training import LearningRateLogger

    opt = TorchSGD(StepDecay(1.0, steps_per_epoch=2, decay_epochs=(1, 2), decay_factor=0.1), momentum=0.9)
    var = tf.Variable([1.0])
    logger = LearningRateLogger()
    logger.set_model(SimpleNamespace(optimizer=opt))
    logged = []
    for epoch in range(3):
        for _ in range(2):
            opt.apply_gradients([(tf.constant([0.0]), var)])
        logs = {}
        logger.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
    np.testing.assert_allclose(logged, [1.0, 0.1, 0.01], rtol=1e-6)
    assert float(opt.learning_rate) == pytest.approx(0.01)


_SETTINGS_PROBE = textwrap.dedent("""
    import os, sys
    from retinaface_tf import cli
    try:
        cli.main(["train", "--help"])
    except SystemExit:
        pass
    from tensorflow.python.util import _pywrap_util_port
    print(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), _pywrap_util_port.IsMklEnabled())
""")


@pytest.mark.parametrize("onednn, expect", [(None, "true True"), ("0", "true False")])
def test_train_command_turns_on_onednn_and_the_caching_allocator(onednn, expect):
    """`retinaface-tf train` sets oneDNN and the BFC allocator before TensorFlow loads (TensorFlow
    turns oneDNN on by default only on AVX-512 VNNI / AMX CPUs); a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run([sys.executable, "-c", _SETTINGS_PROBE], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expect


def test_training_settings_do_nothing_once_tensorflow_is_loaded():
    from retinaface_tf.environment import TRAINING, use_training_settings

    environ: dict = {}
    assert use_training_settings(environ) == {} and environ == {}  # tensorflow is imported in this process
    assert set(TRAINING) == {"TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC"}
