"""The one config system: strict pydantic configs of every kind, one loader, clear errors, CLI overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bloodsmear.config import StrictConfig, TrainConfig, load_config, load_train_config, parse_overrides
from bloodsmear.errors import InputError
from bloodsmear.experiments.dann import DannConfig
from bloodsmear.experiments.domain_runs import MapSettings, RunSettings
from bloodsmear.experiments.domains_config import DomainsConfig
from bloodsmear.experiments.grid import GridConfig
from bloodsmear.experiments.runner import KINDS, build_overrides, config_kind, load_config_file, run_config_file
from bloodsmear.inference.pipeline_config import PIPELINES_DIR, PipelineConfig
from bloodsmear.io import read_json
from bloodsmear.settings import ZOO_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GRID = {"name": "g", "backbones": ["tiny_cnn"], "datasets": [{"name": "A", "source": "a"}]}


def _write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_misspelt_nested_key_names_file_dotted_key_and_valid_keys(tmp_path):
    p = _write(tmp_path, "optim: {lrr: 0.1}\n")
    with pytest.raises(InputError) as e:
        load_train_config(p)
    assert str(e.value) == (f"{p}: unknown key 'optim.lrr' "
                            "(valid: backbone_lr_mult, lr, momentum, name, weight_decay)")
    p = _write(tmp_path, "epochz: 3\n")
    with pytest.raises(InputError, match=r"unknown key 'epochz' \(valid: augment, .*epochs"):
        load_train_config(p)


def test_wrong_type_is_one_clear_line(tmp_path):
    p = _write(tmp_path, "optim: {lr: fast}\n")
    with pytest.raises(InputError) as e:
        load_train_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: key 'optim.lr': ") and "valid number" in msg and "'fast'" in msg
    assert "\n" not in msg
    p = _write(tmp_path, "kind: domains\ntrain: {epochs: many}\n")
    with pytest.raises(InputError, match=r"key 'train.epochs': .*integer.*'many'"):
        load_config_file(p)


@pytest.mark.parametrize("kind, text, key, valid", [
    ("domains", "kind: domains\ntrain: {epochz: 2}\n", "train.epochz", "batch_size, dann, dropout, epochs"),
    ("domains", "kind: domains\nmaps: {view: 2}\n", "maps.view", "aug_seed, augment, backbone"),
    ("dann", "kind: dann\nmaps: {trainfrom: 0}\n", "maps.trainfrom", "aug_seed, augment, backbone, init_from, train_from"),
    ("dann", "kind: dann\nsourse: {name: pbc}\n", "sourse", "cache_dir, classes"),
    ("dann", "kind: dann\nsource: {name: pbc, max_per_clas: 3}\n", "source.max_per_clas", "box_scale, crop_side"),
    ("domains", "kind: domains\ndomains: {A: {name: pbc, rot: x}}\n", "domains.A.rot", "box_scale, crop_side"),
    ("grid", "kind: grid\nname: g\nbackbones: [a]\ndatasets: [{name: A, sourse: a}]\n", "datasets.0.sourse",
     "classes, format, kind, margin, method, min_per_class, name, per_class, source"),
    ("grid", "kind: grid\nname: g\nbackbones: [a]\ndatasets: [{name: A, source: a}]\ntrain: {optim: {lrr: 1}}\n",
     "train.optim.lrr", "backbone_lr_mult, lr"),
])
def test_misspelt_key_in_every_kind(tmp_path, kind, text, key, valid):
    p = _write(tmp_path, text)
    assert config_kind(p).name == kind
    with pytest.raises(InputError, match=rf"{p}: unknown key '{key}' \(valid: {valid}"):
        load_config_file(p)


def test_pipeline_config_unknown_key_and_wrong_type(tmp_path):
    p = _write(tmp_path, "segmenter: x\nreview_treshold: 0.7\n")
    with pytest.raises(InputError, match=r"unknown key 'review_treshold' \(valid: .*review_threshold"):
        PipelineConfig.load(p)
    p = _write(tmp_path, "tile_size: huge\n")
    with pytest.raises(InputError, match="key 'tile_size'"):
        PipelineConfig.load(p)
    p = _write(tmp_path, "base_dir: /elsewhere\n")
    with pytest.raises(InputError, match="base_dir is not a setting"):
        PipelineConfig.load(p)
    cfg = PipelineConfig.load(_write(tmp_path, "# only a comment\n", "empty.yaml"))
    assert cfg == PipelineConfig(name="empty", base_dir=str(tmp_path.resolve()))  # empty file -> the defaults


@pytest.mark.parametrize("cls, d", [
    (TrainConfig, {"optim": {"lr": 3e-4}, "data": {"class_map": {"a": "b"}}, "epochs": 2}),
    (DomainsConfig, {"train": {"epochs": 2, "dann": {"max_lambda": 0.5}}, "maps": {"views": 2}, "seeds": [0, 1]}),
    (DannConfig, {"objective": "supervised", "stain": True, "train": {"lr": 1e-3}}),
    (GridConfig, {**GRID, "train": {"optim": {"name": "sgd"}}}),
    (PipelineConfig, {"refine": "x", "scale": 33.0, "refine_crop": {"frame_rbc": 4.0}}),
])
def test_saved_configs_round_trip(tmp_path, cls, d):
    cfg = cls.from_dict(d)
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON
    for suffix in (".json", ".yaml"):
        saved = cfg.save(tmp_path / f"c{suffix}")
        assert load_config(cls, saved) == cfg


def test_every_shipped_config_loads_into_its_kind():
    from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig
    from bloodsmear.training.seg_train import SegTrainConfig

    from bloodsmear.experiments.lodo_config import LodoConfig
    from bloodsmear.inference.pipeline_config import PipelineConfig

    by_folder = {"classifier": TrainConfig, "domains": DomainsConfig, "dann": DannConfig, "grid": GridConfig,
                 "lodo": LodoConfig}
    segmenters = {"fast.yaml": SegTrainConfig, "maskrcnn.yaml": MaskRCNNTrainConfig}
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) >= 14
    for f in files:
        folder = f.parent.name
        if folder == "segmenter":
            cfg = load_config(segmenters[f.name], f)
        elif folder == "pipelines":  # analyze/evaluate --pipeline configs, not `train` kinds (base_dir: where
            cfg = PipelineConfig.load(f)  # it was read, not part of the dict)
            assert PipelineConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict(), f
            continue
        else:
            kind, cfg = load_config_file(f)
            assert kind.config is by_folder[folder], f
        assert isinstance(cfg, StrictConfig) and type(cfg).from_dict(cfg.to_dict()) == cfg, f


def test_shipped_model_folders_configs_still_load():
    info = read_json(ZOO_DIR / "pbc-mobilenetv2" / "config.json")
    cfg = TrainConfig.from_dict(info["training"], source="pbc-mobilenetv2")
    assert cfg.data.image_size == 80 and cfg.optim.name == "adamw" and cfg.to_dict() == {
        **info["training"], "model": {**info["training"]["model"], "init_from": None},
        "data": {**info["training"]["data"], "label": "image"}}  # fields added since: their defaults
    for name in ("pbc-lisc-dann", "pbc-screen-stain"):
        t = read_json(ZOO_DIR / name / "config.json")["training"]
        assert MapSettings.from_dict(t["maps"]).to_dict() == t["maps"]  # the cached-map hash stays the same
        assert RunSettings.from_dict(t["train"]).to_dict() == t["train"]
    for p in sorted(PIPELINES_DIR.glob("*.yaml")):
        assert PipelineConfig.load(p).name == p.stem


def test_overrides_dotted_and_typed(tmp_path):
    p = _write(tmp_path, "kind: domains\ntrain: {epochs: 9, lr: 0.1}\n")
    cfg = load_config(DomainsConfig, p, ["train.epochs=2", "train.dann.max_lambda=0.5", "seeds=[0, 1]"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.1 and cfg.train.dann == {"max_lambda": 0.5}
    assert cfg.seeds == [0, 1]
    assert parse_overrides(["a.b=x", "a.c=1"]) == {"a": {"b": "x", "c": 1}}
    with pytest.raises(ValueError, match="epochs"):
        cfg.train.epochs = "many"  # assignments are validated too


@pytest.mark.parametrize("kind, option, key", [
    ("classifier", "epochs", ("epochs",)), ("classifier", "lr", ("optim", "lr")),
    ("domains", "epochs", ("train", "epochs")), ("domains", "device", ("device",)),
    ("dann", "batch_size", ("train", "batch_size")), ("dann", "pretrained", ("train", "pretrained")),
    ("grid", "epochs", ("epochs",)), ("grid", "out_dir", ("out",)),
])
def test_cli_shortcuts_map_to_each_kinds_key(kind, option, key):
    over = build_overrides(KINDS[kind], {option: 7, "seed": None})
    node = over
    for k in key:
        node = node[k]
    assert node == 7


def test_undeclared_override_is_one_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match=r"--device: not an option of classifier configs \(valid: --epochs, --lr"):
        build_overrides(KINDS["classifier"], {"device": "cuda"})
    with pytest.raises(InputError, match=r"unknown key 'train.epochz' \(valid: batch_size, dann"):
        build_overrides(KINDS["domains"], None, ["train.epochz=2"])
    assert build_overrides(KINDS["domains"], None, ["train.dann.max_lambda=0.5"]) == {
        "train": {"dann": {"max_lambda": 0.5}}}  # free-form dict sections take any key
    with pytest.raises(InputError, match="unknown config kind 'segment'"):
        config_kind(_write(tmp_path, "kind: segment\n"))


def test_run_config_file_applies_shortcuts_per_kind(monkeypatch):
    """`bloodsmear train configs/domains/pbc_lisc.yaml --epochs 2` used to fail: unknown config key epochs."""
    seen = {}

    def fake(cfg, *, restart=False, progress=True):
        seen["cfg"] = cfg
        return cfg

    for name in ("domains", "classifier"):
        monkeypatch.setitem(KINDS, name, dataclasses.replace(KINDS[name], run=fake))
    run_config_file(CONFIGS / "domains" / "pbc_lisc.yaml", shortcuts={"epochs": 2, "device": "cuda"},
                    sets=["train.lr=0.001"])
    assert (seen["cfg"].train.epochs, seen["cfg"].device, seen["cfg"].train.lr) == (2, "cuda", 0.001)
    run_config_file(CONFIGS / "classifier" / "pbc_mobilenetv2.yaml", shortcuts={"epochs": 2, "lr": 0.5})
    assert (seen["cfg"].epochs, seen["cfg"].optim.lr) == (2, 0.5)


def test_train_cli_takes_declared_shortcuts_and_refuses_others(monkeypatch):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app

    class Res:
        def __init__(self, cfg):
            self.cfg = cfg

        def to_dict(self):
            return {"epochs": self.cfg.train.epochs, "device": self.cfg.device}

    monkeypatch.setitem(KINDS, "domains", dataclasses.replace(KINDS["domains"], run=lambda cfg, **kw: Res(cfg)))
    cfg = str(CONFIGS / "domains" / "pbc_lisc.yaml")
    r = CliRunner().invoke(app, ["train", cfg, "--epochs", "2", "--device", "cuda", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1]) == {"epochs": 2, "device": "cuda"}
    r = CliRunner().invoke(app, ["train", str(CONFIGS / "classifier" / "pbc_mobilenetv2.yaml"), "--device", "cuda"])
    assert r.exit_code != 0 and "--device: not an option of classifier configs" in r.output


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_json(tmp_path / "missing.json")
    bad = _write(tmp_path, "{oops", "bad.json")
    with pytest.raises(InputError, match=rf"{bad}: not valid JSON"):
        read_json(bad)
    with pytest.raises(InputError, match=rf"{bad}: not valid JSON"):
        load_train_config(bad)
    assert read_json(_write(tmp_path, '{"a": 1}', "ok.json")) == {"a": 1}
    with pytest.raises(InputError, match="not readable YAML"):
        load_train_config(_write(tmp_path, "a: [1\n", "bad.yaml"))
    with pytest.raises(InputError, match="mapping at the top level"):
        load_train_config(_write(tmp_path, "- 1\n", "list.yaml"))


def test_updated_copies_are_validated_unlike_model_copy(tmp_path):
    """`cfg.updated(...)`: a changed copy checked as a loaded config is (model_copy(update=...) is not);
    PipelineConfig's cross-field `validate()` too, and its base_dir (kept out of to_dict) carried over."""
    from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig

    cfg = TrainConfig()
    assert cfg.updated(seed=cfg.seed + 1).seed == cfg.seed + 1
    with pytest.raises(InputError, match="unknown key 'sede'"):
        cfg.updated(sede=3)
    with pytest.raises(InputError, match="seed"):
        cfg.updated(seed="three")
    assert MaskRCNNTrainConfig().updated(out_dir=str(tmp_path)).out_dir == str(tmp_path)
    (tmp_path / "p.yaml").write_text("review_threshold: 0.5\n")
    pipe = PipelineConfig.load(tmp_path / "p.yaml")
    changed = pipe.updated(review_threshold=0.7)
    assert changed.review_threshold == 0.7 and changed.base_dir == pipe.base_dir == str(tmp_path.resolve())
    with pytest.raises(InputError, match="review_threshold must be in"):
        pipe.updated(review_threshold=2.0)  # model_copy gave a config that failed only later, in Pipeline
    with pytest.raises(InputError, match="tile_overlap"):
        pipe.updated(tile_overlap=4096)
