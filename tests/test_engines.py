"""Execution engines: the engine options, the Ray engine's resource plan, workers that travel.

These run without Ray; tests/test_ray_engine.py runs the Ray engine on a local cluster.
"""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import pytest

from conftest import copy_short_sequence
from vidprop import cli
from vidprop.config import load_config
from vidprop.engines.config import RayConfig
from vidprop.engines.ray_engine import GIB, plan_workers
from vidprop.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LAB = str(REPO / "configs" / "davis2017_lab.yaml")
GPU_NODE = [{"CPU": 8.0, "GPU": 4.0, "memory": 32.0 * GIB}]
CPU_NODE = [{"CPU": 2.0, "memory": 6.0 * GIB}]


def test_default_plan_is_one_worker_per_gpu_with_an_equal_share():
    plan = plan_workers(RayConfig(), "auto", GPU_NODE)
    assert (plan.workers, plan.gpus, plan.cpus, plan.memory, plan.device) == (4, 1.0, 2, 8 * GIB, "cuda")
    plan = plan_workers(RayConfig(gpus_per_worker=0.5), "cuda", GPU_NODE)
    assert (plan.workers, plan.gpus, plan.cpus, plan.device) == (8, 0.5, 1, "cuda")


def test_cpu_plan_pins_the_cpu_and_splits_the_cores():
    plan = plan_workers(RayConfig(), "auto", CPU_NODE)
    assert (plan.workers, plan.gpus, plan.cpus, plan.device) == (1, 0.0, 2, "cpu")
    plan = plan_workers(RayConfig(workers=2), "cpu", CPU_NODE)
    assert (plan.workers, plan.cpus, plan.memory) == (2, 1, 3 * GIB)
    # a GPU cluster used on purpose without GPUs: the actors must not see them
    plan = plan_workers(RayConfig(workers=2, gpus_per_worker=0), "auto", GPU_NODE)
    assert (plan.gpus, plan.device, plan.cpus) == (0.0, "cpu", 4)
    plan = plan_workers(RayConfig(memory_per_worker_gb=1.5), "cpu", CPU_NODE)
    assert plan.memory == int(1.5 * GIB)


@pytest.mark.parametrize(
    "ray_config, device, resources, key, words",
    [
        (RayConfig(), "cuda:1", GPU_NODE, "runtime.device", "GPU that Ray assigns"),
        (RayConfig(gpus_per_worker=1), "cpu", GPU_NODE, "runtime.ray.gpus_per_worker", "runtime.device is 'cpu'"),
        (RayConfig(), "cuda", CPU_NODE, "runtime.ray.gpus_per_worker", "no GPU"),
        (RayConfig(gpus_per_worker=2), "auto", [{**GPU_NODE[0], "GPU": 1.0}] * 2, "runtime.ray.gpus_per_worker", "cluster has 2"),
        (RayConfig(cpus_per_worker=16), "auto", GPU_NODE * 2, "runtime.ray.cpus_per_worker", "no node .* 16 CPUs"),
        (RayConfig(memory_per_worker_gb=64), "auto", GPU_NODE, "runtime.ray.memory_per_worker_gb", "32.00 GiB"),
    ],
)
def test_plans_that_cannot_work_name_their_key(ray_config, device, resources, key, words):
    with pytest.raises(ConfigError, match=words) as err:
        plan_workers(ray_config, device, resources)
    assert err.value.key == key


def test_default_memory_share_fits_every_gpu_node_of_a_mixed_cluster():
    # a head node without GPUs must not inflate the share: 4 workers on each GPU node still fit
    head = {"CPU": 16.0, "memory": 64.0 * GIB}
    gpu = {"CPU": 32.0, "GPU": 4.0, "memory": 100.0 * GIB}
    plan = plan_workers(RayConfig(), "auto", [head, gpu, gpu])
    assert (plan.workers, plan.cpus, plan.gpus, plan.memory) == (8, 8, 1.0, 25 * GIB)
    # CPU workers: an actor never asks for more CPUs than one node has
    plan = plan_workers(RayConfig(workers=1, gpus_per_worker=0), "cpu", [head, gpu, gpu])
    assert (plan.workers, plan.cpus) == (1, 32)


def test_plan_warns_when_only_some_workers_fit(caplog):
    with caplog.at_level(logging.WARNING, logger="vidprop"):
        plan = plan_workers(RayConfig(workers=3, cpus_per_worker=4, gpus_per_worker=0), "cpu", GPU_NODE)
    assert plan.workers == 3
    assert "only 2 of 3 workers fit" in caplog.text


def test_engine_config_is_checked():
    cfg = load_config(None, ["runtime.engine=ray", "runtime.ray.workers=2", "runtime.ray.gpus_per_worker=1"])
    assert cfg.runtime.engine == "ray" and cfg.runtime.ray.gpus_per_worker == 1.0
    with pytest.raises(ConfigError, match="runtime.engine.*'local', 'ray'"):
        load_config(None, ["runtime.engine=dask"])
    with pytest.raises(ConfigError, match="runtime.engine.*drop --num-shards"):
        load_config(None, ["runtime.engine=ray", "runtime.num_shards=2"])
    with pytest.raises(ConfigError, match="runtime.ray.max_tries"):
        load_config(None, ["runtime.ray.max_tries=0"])


def test_ray_engine_under_torchrun_is_refused(monkeypatch):
    from vidprop.pipeline import resolve_runtime

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="without torchrun"):
        resolve_runtime(load_config(None, ["runtime.engine=ray"]))


@pytest.mark.parametrize("command", ["propagate", "davis", "extract"])
def test_ray_flags_without_the_ray_engine_are_an_error(command, davis_root, tmp_path, capsys, caplog):
    args = {
        "propagate": ["propagate", str(davis_root / "JPEGImages" / "480p"), "--masks", str(davis_root / "Annotations" / "480p")],
        "davis": ["davis", "--davis-root", str(davis_root)],
        "extract": ["extract", "--davis-root", str(davis_root), "--cache-dir", str(tmp_path / "cache")],
    }[command]
    if command != "extract":
        args += ["--out", str(tmp_path / "out")]
    code = cli.main([*args, "--config", LAB, "--workers", "2", "--address", "auto"])
    assert code == 2
    assert "--address, --workers only apply to the Ray engine: add --engine ray" in caplog.text
    assert not (tmp_path / "out").exists()


def test_without_ray_installed_the_ray_engine_says_how_to_get_it(davis_root, tmp_path, monkeypatch, caplog, capsys):
    root = copy_short_sequence(davis_root, tmp_path / "davis", "car-shadow", 3)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    args = ["davis", "--davis-root", str(root), "--out", str(tmp_path / "out"), "--config", LAB, "--device", "cpu"]
    assert cli.main([*args, "--engine", "ray"]) == 2
    assert "pip install 'vidprop[ray]'" in caplog.text
    # once every video is complete there is nothing to run: Ray is not even imported
    assert cli.main(args) == 0
    assert cli.main([*args, "--engine", "ray"]) == 0
    assert "0 video(s) done (0 frames), 1 already complete, 0 failed" in capsys.readouterr().out


def test_workers_travel_without_their_model(davis_root):
    from vidprop.pipeline import VideoPipeline
    from vidprop.pipeline.jobs import FeatureFiller, MaskWriter

    cfg = load_config(LAB)
    for worker_class in (MaskWriter, FeatureFiller):
        copy = pickle.loads(pickle.dumps(worker_class(cfg)))
        assert copy.config == cfg and copy.pipeline is None
        with pytest.raises(TypeError, match="cannot be sent to another process"):
            pickle.dumps(worker_class(cfg, pipeline=VideoPipeline(cfg)))


def test_engine_registry_matches_the_config_choices():
    import typing

    from vidprop.config import RuntimeConfig
    from vidprop.engines import ENGINE_NAMES, ENGINES

    assert tuple(ENGINES) == ENGINE_NAMES == typing.get_args(typing.get_type_hints(RuntimeConfig)["engine"])


def test_a_video_redone_after_a_killed_writer_leaves_no_temporaries(davis_root, tmp_path):
    # a writer killed mid-write (kill -9, a lost node) leaves hidden temporaries next to its masks
    import subprocess

    from vidprop.io.atomic import is_complete
    from vidprop.pipeline import find_videos, run_videos

    root = copy_short_sequence(davis_root, tmp_path / "davis", "car-shadow", 3)
    out = tmp_path / "out"
    out.mkdir()
    code = "import sys; from vidprop.io.atomic import temp_path; print(temp_path(sys.argv[1]))"
    left = [Path(subprocess.run([sys.executable, "-c", code, str(out / name)], capture_output=True, text=True, check=True).stdout.strip())
            for name in ("00001.png", ".vidprop-complete")]  # fmt: skip
    assert all(p.exists() for p in left)  # their process is gone
    jobs = find_videos(root / "JPEGImages" / "480p" / "car-shadow", out, mask=root / "Annotations" / "480p" / "car-shadow" / "00000.png")
    summary = run_videos(jobs, load_config(LAB, ["runtime.device=cpu"]))
    assert summary.exit_code == 0 and is_complete(out)
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]


# The driver of `--engine ray`, run in a fresh process with the engine replaced by one that records
# what it is given: it plans from listings and headers (no torch, no video opened or decoded).
_DRIVER = """
import json, sys
from vidprop import cli, engines
from vidprop.pipeline.jobs import VideoOutcome

given = {}

def record(tasks, make_worker, config):
    given.update({t.name: t.frames for t in tasks})
    return engines.EngineResult({t.name: VideoOutcome(t.name, "done", frames=t.frames) for t in tasks})

engines.ENGINES["ray"] = "__main__:record"
code = cli.main(sys.argv[1:])
heavy = ("torch", "cv2", "diffusers", "transformers", "vidprop.pipeline.inputs", "vidprop.pipeline.stream")
print(json.dumps({"code": code, "given": given, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_the_ray_driver_plans_from_listings_and_headers_without_torch(davis_root, tmp_path):
    import json
    import subprocess

    import numpy as np
    from PIL import Image

    from conftest import write_mp4

    src, masks = tmp_path / "videos", tmp_path / "masks"
    masks.mkdir()
    for name, n in (("blackswan", 4), ("car-shadow", 6)):
        (src / name).mkdir(parents=True)
        for frame in sorted((davis_root / "JPEGImages" / "480p" / name).glob("*.jpg"))[:n]:
            (src / name / frame.name).symlink_to(frame)
        (masks / f"{name}.png").symlink_to(davis_root / "Annotations" / "480p" / name / "00000.png")
    dog = sorted((davis_root / "JPEGImages" / "480p" / "dog").glob("*.jpg"))[:5]
    write_mp4([np.asarray(Image.open(p).convert("RGB"))[::4, ::4] for p in dog], src / "dog.mp4")
    Image.open(davis_root / "Annotations" / "480p" / "dog" / "00000.png").resize((214, 120), Image.NEAREST).save(masks / "dog.png")
    args = ["propagate", str(src), "--masks", str(masks), "--out", str(tmp_path / "out"), "--config", LAB, "--engine", "ray"]
    run = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    # lengths: a folder's listing, the mp4's header (the worker decodes it, not the driver)
    assert result["given"] == {"blackswan": 4, "car-shadow": 6, "dog": 5}
    assert result["loaded"] == []


def _never_called(tasks, make_worker, config):
    raise AssertionError("the engine was started")


def test_the_ray_engine_refuses_outputs_inside_inputs_before_starting(davis_root, tmp_path, monkeypatch, caplog):
    from vidprop.engines import ENGINES

    monkeypatch.setitem(ENGINES, "ray", f"{__name__}:_never_called")
    root = copy_short_sequence(davis_root, tmp_path / "davis", "car-shadow", 3)
    frames = root / "JPEGImages" / "480p" / "car-shadow"
    mask = root / "Annotations" / "480p" / "car-shadow" / "00000.png"
    code = cli.main(["propagate", str(frames), "--mask", str(mask), "--out", str(frames / "out"), "--config", LAB, "--engine", "ray"])
    assert code == 2 and "the output folder is inside the frames folder" in caplog.text
    assert not (frames / "out").exists()
