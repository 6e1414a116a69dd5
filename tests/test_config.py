"""Config composition: defaults, presets, YAML round trip, strict overrides and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidprop import __version__
from vidprop.config import RuntimeConfig, VidpropConfig, config_to_yaml, dump_config, load_config, result_fingerprint
from vidprop.config_base import iter_fields
from vidprop.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs"


def test_defaults_are_the_papers_davis_setting():
    cfg = VidpropConfig()
    assert (cfg.data.short_side, cfg.data.multiple) == (480, 32)
    dift = cfg.features.dift
    assert cfg.features.backend == "dift_sd"
    assert (dift.timestep, dift.up_ft_index, dift.ensemble_size, dift.prompt) == (51, 2, 8, "")
    assert "stable-diffusion-2-1" in dift.model_id
    p = cfg.propagation
    assert (p.topk, p.n_last_frames, p.radius, p.temperature) == (15, 28, 15, 0.2)
    rt = cfg.runtime
    assert (rt.device, rt.dtype, rt.num_shards, rt.shard_index) == ("auto", "float32", 1, 0)
    assert not (rt.overwrite or rt.fail_fast or rt.overlay)


def test_every_config_field_has_a_help_line():
    fields = list(iter_fields(VidpropConfig))
    assert len(fields) > 20
    missing = [key for key, _, _, help_ in fields if not help_.strip()]
    assert missing == []


def test_dift_preset_is_the_default_setting():
    assert load_config(PRESETS / "davis2017_dift_sd.yaml") == VidpropConfig()


def test_lab_preset_differs_only_in_the_backend():
    cfg = load_config(PRESETS / "davis2017_lab.yaml")
    assert cfg.features.backend == "lab"
    assert cfg.propagation == VidpropConfig().propagation
    assert cfg.data == VidpropConfig().data


def test_every_preset_loads_and_round_trips(tmp_path, caplog):
    presets = sorted(PRESETS.glob("*.yaml"))
    assert {p.name for p in presets} >= {"davis2017_dift_sd.yaml", "davis2017_lab.yaml"}
    for preset in presets:
        with caplog.at_level("WARNING", logger="vidprop"):
            cfg = load_config(preset)
        assert caplog.text == "", preset  # no retired or unknown key
        out = dump_config(cfg, tmp_path / f"{preset.stem}.yaml")
        assert yaml.safe_load(out.read_text())["vidprop_version"] == __version__
        assert load_config(out) == cfg


def test_overrides_are_parsed_as_yaml_and_applied_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("propagation:\n  topk: 7\nfeatures:\n  backend: lab\n")
    cfg = load_config(path, ["propagation.topk=10", "features.dift.revision=null", "propagation.temperature=1"])
    assert cfg.propagation.topk == 10 and isinstance(cfg.propagation.topk, int)
    assert cfg.features.backend == "lab"  # from the file
    assert cfg.features.dift.revision is None
    assert cfg.propagation.temperature == 1.0 and isinstance(cfg.propagation.temperature, float)
    # later overrides win; (key, value) pairs and mappings work too
    assert load_config(None, ["propagation.topk=1", ("propagation.topk", 2)]).propagation.topk == 2
    assert load_config(None, {"propagation.topk": 3}).propagation.topk == 3
    # a whole section as a YAML mapping merges into the defaults
    cfg = load_config(None, ["propagation={topk: 3, radius: 4}"])
    assert (cfg.propagation.topk, cfg.propagation.radius, cfg.propagation.n_last_frames) == (3, 4, 28)


def test_unknown_override_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["propagation.topkk=3"])
    assert err.value.key == "propagation.topkk"
    assert "did you mean 'propagation.topk'" in str(err.value)
    with pytest.raises(ConfigError, match="runtime.dvice.*did you mean 'runtime.device'"):
        load_config(None, ["runtime.dvice=cpu"])
    with pytest.raises(ConfigError) as err:
        load_config(None, ["propagation.topk.x=1"])
    assert err.value.key == "propagation.topk"
    with pytest.raises(ConfigError, match="'propagation.topk' is a value, not a section"):
        load_config(None, ["propagation.topk=1", "propagation.topk.x=1"])


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("propagation.topk=ten", "propagation.topk", "expected an integer"),
        ("propagation.topk=true", "propagation.topk", "expected an integer"),
        ("runtime.device=gpu", "runtime.device", "'auto', 'cpu'"),
        ("runtime.dtype=float64", "runtime.dtype", "float32, float16"),
        ("runtime.overwrite=maybe", "runtime.overwrite", "expected true or false"),
        ("runtime.shard_index=2", "runtime.shard_index", "shard_index < num_shards"),
        ("data.short_side=500", "data.short_side", "multiple"),
        # an empty value (`--cache-dir "$UNSET"`) was the current folder, filled with a cache
        ("features.cache.dir=", "features.cache.dir", "expected a folder path, or null for no cache"),
        ("features.dift.revision=", "features.dift.revision", "or null for the default branch"),
    ],
)
def test_bad_override_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key
    assert fragment in str(err.value)
    assert err.value.exit_code == 2


def test_malformed_override():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["propagation.topk"])
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(None, ["propagation.topk=[1"])


def test_config_file_errors_show_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config("missing.yaml")
    assert err.value.path == str(tmp_path / "missing.yaml")
    assert "does not exist" in str(err.value)

    (tmp_path / "typo.yaml").write_text("propagation:\n  radious: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config("typo.yaml")
    assert err.value.path == str(tmp_path / "typo.yaml")
    assert err.value.key == "propagation.radious"
    assert "did you mean 'propagation.radius'" in str(err.value)

    (tmp_path / "broken.yaml").write_text("propagation: [topk: 3\n")
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        load_config("broken.yaml")
    assert err.value.path == str(tmp_path / "broken.yaml")

    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("list.yaml")

    (tmp_path / "section.yaml").write_text("propagation: 3\n")
    with pytest.raises(ConfigError, match="mapping of options"):
        load_config("section.yaml")


def test_a_key_given_twice_is_refused_not_the_last_one_kept(tmp_path):
    # PyYAML keeps the last of two `topk:` lines silently; the file then runs with a value its reader may miss
    (tmp_path / "twice.yaml").write_text("features:\n  backend: lab\npropagation:\n  topk: 5\n  radius: 4\n  topk: 7\n")
    with pytest.raises(ConfigError, match="found duplicate key 'topk'") as err:
        load_config(tmp_path / "twice.yaml")
    assert err.value.path == str(tmp_path / "twice.yaml") and "line 6" in str(err.value)
    with pytest.raises(ConfigError, match="found duplicate key 'topk'") as err:
        load_config(None, ["propagation={topk: 5, topk: 7}"])
    assert err.value.key == "propagation"
    # a key merged in with << may still be overridden, as YAML defines
    (tmp_path / "merge.yaml").write_text("propagation:\n  <<: {topk: 5, radius: 4}\n  topk: 7\n")
    config = load_config(tmp_path / "merge.yaml")
    assert (config.propagation.topk, config.propagation.radius) == (7, 4)


def test_config_error_is_an_input_error():
    with pytest.raises(InputError):
        RuntimeConfig(num_shards=0)


def test_yaml_text_has_the_version_and_every_section():
    data = yaml.safe_load(config_to_yaml(VidpropConfig()))
    assert data["vidprop_version"] == __version__
    assert set(data) == {"vidprop_version", "data", "features", "propagation", "scoring", "runtime"}


def test_result_fingerprint_follows_only_result_options():
    base = VidpropConfig()
    fp = result_fingerprint(base)
    same = [
        ["runtime.overwrite=true", "runtime.num_shards=4", "runtime.overlay=true"],
        ["features.cache.dir=/tmp/cache", "features.cache.dtype=float32", "data.prefetch=0"],
        ["features.cache.dtype=bfloat16"],  # no cache: its dtype is unused
    ]
    for overrides in same:
        assert result_fingerprint(base.with_overrides(overrides)) == fp, overrides
    different = [
        ["propagation.topk=10"], ["features.dift.timestep=101"], ["features.dift.seed=1"], ["features.backend=lab"],
        ["features.cache.dir=/tmp/cache"],  # features come back rounded to float16
        ["features.cache.dir=/tmp/cache", "features.cache.dtype=bfloat16"],
        ["runtime.dtype=bfloat16"], ["runtime.tf32=false"],
    ]
    for overrides in different:
        assert result_fingerprint(base.with_overrides(overrides)) != fp, overrides
    # where the cache is does not matter, its storage dtype does
    cached = [f"features.cache.dir={d}" for d in ("/tmp/a", "/tmp/b")]
    assert len({result_fingerprint(base.with_overrides([c])) for c in cached}) == 1
    assert result_fingerprint(base.with_overrides([cached[0]])) != result_fingerprint(
        base.with_overrides([cached[0], "features.cache.dtype=bfloat16"])
    )


def test_config_modules_import_without_torch_or_opencv():
    # The configs are plain data: loading them (and building the CLI) must not pay for torch or OpenCV.
    code = (
        "import sys; import vidprop.config, vidprop.cli; vidprop.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'cv2', 'numpy', 'diffusers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_retired_key_in_an_old_config_file_is_dropped_with_a_warning(tmp_path, caplog):
    old = tmp_path / "config.yaml"  # as vidprop 0.1.0 wrote it
    old.write_text("vidprop_version: 0.1.0\nruntime:\n  device: cpu\n  seed: 0\npropagation:\n  topk: 7\n")
    with caplog.at_level("WARNING", logger="vidprop"):
        cfg = load_config(old)
    assert (cfg.runtime.device, cfg.propagation.topk) == ("cpu", 7)
    assert "runtime.seed" in caplog.text and str(old) in caplog.text
    with pytest.raises(ConfigError, match="runtime.seed"):  # an explicit override is still strict
        load_config(None, ["runtime.seed=1"])


@pytest.mark.parametrize(
    "name, ok",
    [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True), ("mps", True), ("mps:0", True),
     ("cpu:0", False), ("gpu", False), ("cuda:x", False), ("", False), (None, False), (3, False)],
)
def test_device_names_are_checked_without_torch(name, ok):
    from vidprop.device import is_device_name

    assert is_device_name(name) is ok
    assert is_device_name("auto", auto=False) is False
