"""``vidprop sweep``: grid checks, equality with separate runs, shared work, resume, generic mode, plots."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import copy_short_sequence
from vidprop import cli
from vidprop.config import load_config
from vidprop.errors import ConfigError
from vidprop.sweep import build_grid

REPO = Path(__file__).resolve().parents[1]
LAB = str(REPO / "configs" / "davis2017_lab.yaml")
# small frames and few of them keep the suite fast; every result is still compared with separate runs
SMALL = ["--set", "data.short_side=128", "--device", "cpu"]
SEQUENCES = ("drift-chicane", "dog", "car-shadow")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _printed_jf(text: str) -> float:
    return float(re.search(r"J&F-Mean: ([0-9.]+)", text).group(1))


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture
def three_sequences(davis_root, tmp_path) -> Path:
    """A DAVIS root with the first 6 frames of 3 sample sequences."""
    for name in SEQUENCES:
        copy_short_sequence(davis_root, tmp_path / "davis", name, 6)
    return tmp_path / "davis"


# ---- the grid ---------------------------------------------------------------------------


def test_grid_is_the_product_of_the_axes_with_values_parsed_as_yaml():
    base = load_config(LAB)
    grid = build_grid(["propagation.topk=5,10,15", "propagation.temperature=0.1,0.2"], base)
    assert [p.values for p in grid.points] == [(5, 0.1), (5, 0.2), (10, 0.1), (10, 0.2), (15, 0.1), (15, 0.2)]
    assert grid.points[3].config.propagation.topk == 10 and grid.points[3].config.propagation.temperature == 0.2
    assert grid.points[3].config.features == base.features
    layers = build_grid(["features.dift.up_ft_index=1,[1,2]"], load_config())
    assert [p.values for p in layers.points] == [(1,), ((1, 2),)]


@pytest.mark.parametrize(
    "axes, key, message",
    [
        (["propagation.topkk=1,2"], "propagation.topkk", "did you mean 'propagation.topk'"),
        (["propagation=1"], "propagation", "is a section"),
        (["propagation.topk="], "propagation.topk", "empty grid axis"),
        (["propagation.topk=5,0"], "propagation.topk", "invalid value 0"),
        (["propagation.temperature=0.1,abc"], "propagation.temperature", "invalid value 'abc'"),
        (["propagation.topk=5,5"], "propagation.topk", "given twice"),
        (["propagation.topk=[5,"], "propagation.topk", "cannot parse"),
        (["propagation.topk=5", "propagation.topk=10"], "propagation.topk", "two --grid"),
        (["runtime.overwrite=true,false"], "runtime.overwrite", "does not change the masks"),
        (["features.dift.timestep=0,51"], "features.dift.timestep", "no effect with features.backend=lab"),
    ],
)
def test_bad_grid_names_the_key(axes, key, message):
    with pytest.raises(ConfigError) as info:
        build_grid(axes, load_config(LAB))
    assert info.value.key == key
    assert message in str(info.value)


def test_bad_grid_fails_before_any_compute_with_exit_2(three_sequences, tmp_path, capsys, monkeypatch):
    import vidprop.sweep.runner as runner

    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("the sweep started"))
    out = tmp_path / "sweep"
    base = ["sweep", "--davis-root", str(three_sequences), "--config", LAB, "--out", str(out)]
    cases = [
        (["--grid", "propagation.topk=5,0"], "propagation.topk"),
        (["--grid", "propagation.radius="], "propagation.radius"),
        (["--grid", "features.lab.strid=4,8"], "features.lab.strid"),
        (["--grid", "propagation.topk=5,10", "--topk", "5"], "propagation.topk"),
        ([], "--grid"),
    ]
    for extra, key in cases:
        assert cli.main(base + extra) == 2
        assert key in capsys.readouterr().err
    assert not out.exists()


# ---- equality with separate runs, shared features ---------------------------------------


def test_lab_propagation_grid_equals_separate_davis_runs_and_extracts_each_frame_once(three_sequences, tmp_path, capsys, monkeypatch):
    from vidprop.features.lab import LabExtractor

    extracted: list[int] = []
    original = LabExtractor.extract

    def counting(self, images):
        extracted.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(LabExtractor, "extract", counting)
    from vidprop.propagation import fused

    ranked: list[int] = []
    original_topk = fused.window_topk
    monkeypatch.setattr(fused, "window_topk", lambda *a: ranked.append(a[4]) or original_topk(*a))
    out = tmp_path / "sweep"
    args = ["sweep", "--davis-root", str(three_sequences), "--config", LAB, *SMALL, "--out", str(out),
            "--grid", "propagation.topk=3,10,20", "--grid", "propagation.temperature=0.05,0.2"]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert sum(extracted) == 3 * 6  # every frame of the 3 sequences once, for the 6 points
    assert ranked == [21] * 3 * 5  # each propagated frame's candidates ranked once (top 20 + 1) for the 6 points
    rows = _csv_rows(out / "sweep.csv")
    assert [(r["propagation.topk"], r["propagation.temperature"]) for r in rows] == [
        ("3", "0.05"), ("3", "0.2"), ("10", "0.05"), ("10", "0.2"), ("20", "0.05"), ("20", "0.2")
    ]
    assert all(set(r) >= {"J&F-Mean", "J-Mean", "F-Mean", "seconds", *(f"J&F {s}" for s in SEQUENCES)} for r in rows)
    points = sorted((out / "points").iterdir())
    for row in rows:
        single = tmp_path / f"single-{row['propagation.topk']}-{row['propagation.temperature']}"
        code = cli.main(["davis", "--davis-root", str(three_sequences), "--config", LAB, *SMALL, "--out", str(single),
                         "--set", f"propagation.topk={row['propagation.topk']}",
                         "--set", f"propagation.temperature={row['propagation.temperature']}"])
        assert code == 0
        assert float(row["J&F-Mean"]) == _printed_jf(capsys.readouterr().out)
        point = next(p for p in points if p.name.startswith(f"topk-{row['propagation.topk']}_temperature-{row['propagation.temperature']}-"))
        for seq in SEQUENCES:
            assert _pngs(point / seq) == _pngs(single / seq), (row, seq)
    jf = [float(r["J&F-Mean"]) for r in rows]
    assert len(set(jf)) > 1  # the settings matter on these frames
    best = load_config(out / "best.yaml")
    winner = rows[jf.index(max(jf))]
    assert (best.propagation.topk, best.propagation.temperature) == (int(winner["propagation.topk"]), float(winner["propagation.temperature"]))
    assert best.features == load_config(LAB).features


def _tiny_sd_overrides(tiny_sd_dir: Path) -> list[str]:
    return [
        f"features.dift.model_id={tiny_sd_dir}", "features.dift.ensemble_size=2", "features.dift.batch_size=2",
        "data.short_side=64", "runtime.device=cpu", "propagation.topk=3",
    ]


def test_tiny_sd_timestep_by_layer_grid_runs_one_unet_pass_per_frame_and_timestep(short_sequence, tiny_sd_dir, tmp_path, monkeypatch):
    from vidprop.features.dift_sd import DiftExtractor
    from vidprop.pipeline import run_davis
    from vidprop.sweep import DavisSweepData, run_sweep

    root = short_sequence("car-shadow", 4)
    passes: list[tuple[int, int]] = []
    original = DiftExtractor.unet_features

    def counting(self, latents):
        passes.append((self.config.timestep, int(latents.shape[0])))
        return original(self, latents)

    loads = []
    original_init = DiftExtractor.__init__

    def counting_loads(self, *args, **kwargs):
        loads.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(DiftExtractor, "unet_features", counting)
    monkeypatch.setattr(DiftExtractor, "__init__", counting_loads)
    base = load_config(None, _tiny_sd_overrides(tiny_sd_dir))
    grid = build_grid(["features.dift.timestep=51,301", "features.dift.up_ft_index=1,2,[1,2]"], base)
    result = run_sweep(grid, DavisSweepData(root), tmp_path / "sweep")
    # batch_size 2 = the 2 ensemble members of one frame: one UNet call per frame and timestep, for all 3 layer settings
    assert sorted(passes) == [(51, 2)] * 4 + [(301, 2)] * 4
    assert len(loads) == 1  # the model loaded once, for both timesteps
    assert len(result.results) == 6
    for point in grid.points:
        single = run_davis(root, tmp_path / f"single-{point.index}", point.config)
        assert result.results[point.index].j_and_f == single.scores.j_and_f_mean, point.values
        assert result.results[point.index].per_sequence["car-shadow"] == pytest.approx(single.scores.j_and_f_mean, abs=1e-15)
        folder = tmp_path / "sweep" / "points" / point.name(grid.axes) / "car-shadow"
        assert _pngs(folder) == _pngs(tmp_path / f"single-{point.index}" / "car-shadow"), point.values
    if _has_matplotlib():
        assert {p.name for p in result.plots} == {
            "jf_vs_timestep.png", "heatmap_features.dift.timestep_x_features.dift.up_ft_index.png"
        }
        for path in result.plots:
            _check_png(path)


def test_cache_entries_of_a_shared_pass_serve_single_runs_without_recomputing(short_sequence, tiny_sd_dir, tmp_path, monkeypatch):
    from vidprop.features.dift_sd import DiftExtractor
    from vidprop.pipeline import run_davis
    from vidprop.sweep import DavisSweepData, run_sweep

    root = short_sequence("car-shadow", 3)
    base = load_config(None, [*_tiny_sd_overrides(tiny_sd_dir), f"features.cache.dir={tmp_path / 'cache'}"])
    grid = build_grid(["features.dift.up_ft_index=1,2"], base)
    result = run_sweep(grid, DavisSweepData(root), tmp_path / "sweep")
    monkeypatch.setattr(DiftExtractor, "unet_features", lambda *a: pytest.fail("a cached feature was recomputed"))
    for point in grid.points:
        single = run_davis(root, tmp_path / f"single-{point.index}", point.config)
        assert result.results[point.index].j_and_f == single.scores.j_and_f_mean


# ---- resume -----------------------------------------------------------------------------


def _without_seconds(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in _csv_rows(path)]


def test_an_interrupted_sweep_resumes_to_the_same_csv(three_sequences, tmp_path, monkeypatch):
    import vidprop.sweep.runner as runner
    from vidprop.sweep import DavisSweepData, run_sweep

    base = load_config(LAB, ["data.short_side=128", "runtime.device=cpu"])
    grid = build_grid(["features.lab.stride=8,16", "propagation.topk=3,10"], base)
    data = DavisSweepData(three_sequences)
    full = run_sweep(grid, data, tmp_path / "full")
    assert len(full.results) == 4

    calls = {"passes": 0}
    original = runner._run_pass

    def interrupted(shared, video, todo, clock):
        calls["passes"] += 1
        if calls["passes"] == 5:  # the second feature setting's second video: Ctrl-C in the middle of it
            stream = shared.stream
            shared.stream = lambda *a, **k: (item for i, item in enumerate(stream(*a, **k)) if i < 3 or _raise())
        return original(shared, video, todo, clock)

    def _raise():
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, data, tmp_path / "resumed")
    assert len(_csv_rows(tmp_path / "resumed" / "sweep.csv")) == 2  # the first feature setting's points are done
    # a killed sweep also leaves its temporaries: the resumed run removes them from the folders it redoes
    from vidprop.io.atomic import is_complete

    unfinished = sorted(d for d in (tmp_path / "resumed" / "points").glob("*/*") if d.is_dir() and not is_complete(d))
    code = "import sys; from vidprop.io.atomic import temp_path; print(temp_path(sys.argv[1]))"
    killed = subprocess.run([sys.executable, "-c", code, str(unfinished[0] / "00001.png")], capture_output=True, text=True, check=True)
    stale = Path(killed.stdout.strip())
    assert stale.is_file()

    todo_sizes = []
    monkeypatch.setattr(runner, "_run_pass", lambda shared, video, todo, clock: (todo_sizes.append(len(todo)), original(shared, video, todo, clock)))
    again = run_sweep(grid, data, tmp_path / "resumed")
    assert again.resumed == 2
    # only the second feature setting's last two videos run again: its first video was complete before Ctrl-C
    assert todo_sizes == [2, 2]
    assert _without_seconds(tmp_path / "resumed" / "sweep.csv") == _without_seconds(tmp_path / "full" / "sweep.csv")
    assert not stale.exists()
    assert (tmp_path / "resumed" / "best.yaml").read_text() == (tmp_path / "full" / "best.yaml").read_text()


# ---- generic mode -----------------------------------------------------------------------


def test_generic_mode_equals_propagate_then_evaluate(davis_root, tmp_path, capsys):
    src, gt = tmp_path / "videos", tmp_path / "gt"
    for name in SEQUENCES[:2]:
        for sub, dest in (("JPEGImages", src), ("Annotations", gt)):
            (dest / name).mkdir(parents=True)
            for path in sorted((davis_root / sub / "480p" / name).iterdir())[:5]:
                shutil.copy2(path, dest / name / path.name)
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(src), "--gt", str(gt), "--config", LAB, *SMALL, "--out", str(out),
                     "--grid", "propagation.topk=3,10"]) == 0
    rows = _csv_rows(out / "sweep.csv")
    capsys.readouterr()
    firsts = tmp_path / "first-masks"  # <video>.png: the first frame's mask (a <video>/ folder would give every frame)
    firsts.mkdir()
    for name in SEQUENCES[:2]:
        shutil.copy2(gt / name / "00000.png", firsts / f"{name}.png")
    for row in rows:
        pred = tmp_path / f"pred-{row['propagation.topk']}"
        assert cli.main(["propagate", str(src), "--masks", str(firsts), "--config", LAB, *SMALL,
                         "--topk", row["propagation.topk"], "--out", str(pred)]) == 0
        assert cli.main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / f"eval-{row['propagation.topk']}")]) == 0
        table = capsys.readouterr().out
        jf = float(re.search(r"^\s*([0-9.]+)", table.split("J&F-Mean")[1].splitlines()[1]).group(1))
        assert round(float(row["J&F-Mean"]), 3) == jf

    # a ground truth that does not start at the first frame would label the wrong frame: refused
    (gt / SEQUENCES[0] / "00000.png").unlink()
    assert cli.main(["sweep", str(src), "--gt", str(gt), "--config", LAB, "--out", str(tmp_path / "bad"),
                     "--grid", "propagation.topk=3,10"]) == 2
    assert "not named like the first frame" in capsys.readouterr().err


# ---- plots ------------------------------------------------------------------------------


def _has_matplotlib() -> bool:
    from vidprop.sweep.plots import plots_available

    return plots_available()


def _check_png(path: Path) -> None:
    from vidprop.sweep.plots import FIGURE_SIZE_PX

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == FIGURE_SIZE_PX, path


def test_plots_are_pngs_of_the_documented_size(three_sequences, tmp_path):
    pytest.importorskip("matplotlib")
    from vidprop.sweep import DavisSweepData, run_sweep

    base = load_config(LAB, ["data.short_side=128", "runtime.device=cpu"])
    grid = build_grid(["propagation.topk=3,10", "propagation.temperature=0.05,0.2", "propagation.radius=2,8"], base)
    result = run_sweep(grid, DavisSweepData(three_sequences, sequences=["dog"]), tmp_path / "sweep")
    assert sorted(p.name for p in result.plots) == [
        "heatmap_propagation.temperature_x_propagation.radius.png",
        "heatmap_propagation.topk_x_propagation.radius.png",
        "heatmap_propagation.topk_x_propagation.temperature.png",
    ]
    for path in result.plots:
        _check_png(path)


def test_without_matplotlib_the_csv_and_preset_are_still_written(three_sequences, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--davis-root", str(three_sequences), "--sequences", "dog", "--config", LAB, *SMALL,
                     "--out", str(out), "--grid", "propagation.topk=3,10"]) == 0
    assert len(_csv_rows(out / "sweep.csv")) == 2 and (out / "best.yaml").is_file()
    assert not list(out.glob("*.png"))
    assert "pip install 'vidprop[plot]'" in capsys.readouterr().out


def test_sweep_help_documents_the_grid_and_every_config_key(capsys):
    from vidprop.config import VidpropConfig
    from vidprop.config_base import iter_fields

    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--grid", "--davis-root", "--gt", "--out", "--config", "--set", "--overwrite", "--sequences"):
        assert flag in text
    for key, *_ in iter_fields(VidpropConfig):
        assert f"  {key} = " in text, key


def test_a_sweep_over_other_data_in_the_same_folder_redoes_every_point(davis_root, tmp_path):
    from vidprop.sweep import DavisSweepData, run_sweep

    short = copy_short_sequence(davis_root, tmp_path / "short", "dog", 4)
    longer = copy_short_sequence(davis_root, tmp_path / "longer", "dog", 6)
    grid = build_grid(["propagation.topk=3,10"], load_config(LAB, ["data.short_side=128", "runtime.device=cpu"]))
    run_sweep(grid, DavisSweepData(short), tmp_path / "sweep")
    again = run_sweep(grid, DavisSweepData(longer), tmp_path / "sweep")
    fresh = run_sweep(grid, DavisSweepData(longer), tmp_path / "fresh")
    assert again.resumed == 0
    assert _without_seconds(tmp_path / "sweep" / "sweep.csv") == _without_seconds(tmp_path / "fresh" / "sweep.csv")
    assert {r.index: r.j_and_f for r in again.results.values()} == {r.index: r.j_and_f for r in fresh.results.values()}
    # back to the shorter video: the masks of frames it lacks do not stay beside the new ones
    run_sweep(grid, DavisSweepData(short), tmp_path / "sweep")
    folders = sorted((tmp_path / "sweep" / "points").glob("*/dog"))
    assert len(folders) == 2
    for folder in folders:
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(4)], folder



def test_a_sweep_redoes_points_after_a_first_mask_is_edited_in_place(davis_root, tmp_path):
    # issue 10 item 2, in the sweep: same paths, same modification time, other mask content
    import os

    import numpy as np

    from vidprop.io.masks import read_mask, write_mask
    from vidprop.sweep import DavisSweepData, run_sweep

    root = copy_short_sequence(davis_root, tmp_path / "davis", "dog", 4)
    grid = build_grid(["propagation.topk=3,10"], load_config(LAB, ["data.short_side=128", "runtime.device=cpu"]))
    run_sweep(grid, DavisSweepData(root), tmp_path / "sweep")
    assert run_sweep(grid, DavisSweepData(root), tmp_path / "sweep").resumed == 2
    mask = root / "Annotations" / "480p" / "dog" / "00000.png"
    stat = mask.stat()
    ids = read_mask(mask).ids.copy()
    ids[ids != 0] = 5
    write_mask(mask, ids)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_sweep(grid, DavisSweepData(root), tmp_path / "sweep")
    assert again.resumed == 0
    written = sorted((tmp_path / "sweep" / "points").glob("*/dog/00003.png"))
    assert len(written) == 2 and all(set(np.unique(read_mask(p).ids)) <= {0, 5} for p in written)


def test_a_sweep_folder_inside_the_davis_root_is_refused(three_sequences, tmp_path, caplog):
    out = three_sequences / "sweeps"
    args = ["sweep", "--davis-root", str(three_sequences), "--sequences", "dog", "--config", LAB, *SMALL,
            "--grid", "propagation.topk=3,10", "--out", str(out)]
    assert cli.main(args) == 2
    assert f"{out}: the sweep folder is inside the DAVIS root {three_sequences}" in caplog.text
    assert not out.exists()


def test_an_up_block_the_unet_lacks_stops_the_sweep_before_any_compute(short_sequence, tiny_sd_dir, tmp_path, monkeypatch):
    from vidprop.features.dift_sd import DiftExtractor
    from vidprop.sweep import DavisSweepData, run_sweep

    monkeypatch.setattr(DiftExtractor, "unet_features", lambda *a: pytest.fail("computed before the check"))
    grid = build_grid(["features.dift.up_ft_index=1,7"], load_config(None, _tiny_sd_overrides(tiny_sd_dir)))
    with pytest.raises(ConfigError) as info:
        run_sweep(grid, DavisSweepData(short_sequence("car-shadow", 3)), tmp_path / "sweep")
    assert info.value.key == "features.dift.up_ft_index"
    assert not list((tmp_path / "sweep").rglob("*.png"))


def test_a_grid_over_the_feature_cache_dtype_gives_each_point_its_own_rounding(davis_root, tmp_path):
    # cached features come back rounded to the cache's dtype, which changes masks: a valid axis, one pass each
    from vidprop.pipeline import run_davis
    from vidprop.sweep import DavisSweepData, run_sweep

    root = copy_short_sequence(davis_root, tmp_path / "davis", "dog", 8)
    base = load_config(LAB, ["data.short_side=128", "runtime.device=cpu", f"features.cache.dir={tmp_path / 'cache'}"])
    grid = build_grid(["features.cache.dtype=float16,bfloat16"], base)
    result = run_sweep(grid, DavisSweepData(root), tmp_path / "sweep")
    masks = []
    for point in grid.points:
        single = run_davis(root, tmp_path / f"single-{point.index}", point.config)
        assert result.results[point.index].j_and_f == single.scores.j_and_f_mean
        folder = tmp_path / "sweep" / "points" / point.name(grid.axes) / "dog"
        assert _pngs(folder) == _pngs(tmp_path / f"single-{point.index}" / "dog"), point.values
        masks.append(_pngs(folder))
    assert masks[0] != masks[1]
    with pytest.raises(ConfigError, match="does not change the masks"):  # without a cache the dtype is unused
        build_grid(["features.cache.dtype=float16,bfloat16"], load_config(LAB))
