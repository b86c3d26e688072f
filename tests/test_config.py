"""Training configs: YAML + base composition, dotted overrides, unknown keys, every shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segkd.distill.config import (
    Config,
    ConfigError,
    default_output_dir,
    load_config,
    parse_overrides,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_") and p.parent.name[0] != "_")
RECIPES = [p for p in RECIPES if p.parent.name != "accelerate"]


def _write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == Config(train=cfg.train)  # everything else at its default
    assert cfg.train.output_dir == "runs/default" and not cfg.distill


def test_yaml_values_and_overrides_keep_their_types(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "run.yaml",
        "data: {batch_size: 4}\noptim: {weight_decay: 1e-4}\nteacher: {checkpoint: t.pth}\n"
        "losses:\n  - {name: cwd, weight: 3.0}\n",
    )
    cfg = load_config(
        path,
        [
            "train.max_iters=10",
            "data.crop_size=[64,128]",
            "losses.0.weight=5",
            "optim.lr=2e-3",
            "student.aux=false",
        ],
    )
    assert cfg.train.max_iters == 10 and cfg.data.batch_size == 4
    assert cfg.data.crop_size == [64, 128]
    assert cfg.optim.weight_decay == pytest.approx(1e-4)  # YAML reads "1e-4" as a string: converted
    assert cfg.optim.lr == pytest.approx(2e-3)
    assert cfg.losses == [{"name": "cwd", "weight": 5}]
    assert cfg.student.aux is False and cfg.distill
    assert cfg.train.output_dir == "runs/run"
    # An int where a float is expected becomes a float.
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)


def test_unknown_key_in_a_file_names_the_valid_ones_and_the_closest(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", {"train": {"max_iter": 5}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.max_iter" in msg and "Did you mean 'max_iters'?" in msg and "eval_every" in msg
    assert str(path) in msg


def test_unknown_override_is_rejected_before_anything_runs() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'optim\.learning_rate'.*Valid keys here: lr, momentum"
    ):
        load_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'trian'.*Did you mean 'train'"):
        load_config(None, ["trian.max_iters=1"])


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", {"data": {"crop": [1, 2], "batch_size": "eight"}, "evaluation": {}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.crop" in msg and "data.batch_size must be int" in msg and "'evaluation'" in msg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.mode=tiles", "eval.mode must be one of"),
        ("train.mixed_precision=fp8", "train.mixed_precision must be one of"),
        ("data.crop_size=[64]", "two positive integers"),
        ("train.max_iters=0", "train.max_iters must be positive"),
        ("train.stop_after=50", "train.stop_after must be in 1..train.max_iters"),
        ("train.max_iters=abc", "train.max_iters must be int"),
        ("losses=[{weight: 1}]", "must be a mapping with a 'name'"),
        ("losses=[{name: kd}]", "teacher.checkpoint is null"),
    ],
)
def test_invalid_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override, "train.max_iters=40"] if "max_iters" not in override else [override])


def test_override_syntax() -> None:
    assert parse_overrides(["a.b=1", "c=[1, 2]", "d=null", "e=x=y"]) == [
        ("a.b", 1),
        ("c", [1, 2]),
        ("d", None),
        ("e", "x=y"),
    ]
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["train.max_iters"])
    with pytest.raises(ConfigError, match="losses has 0 entries"):
        load_config(None, ["losses=[]", "losses.0.weight=1"])


def test_base_files_merge_in_order_and_lists_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path / "sub" / "a.yaml", {"data": {"batch_size": 4, "crop_size": [8, 8]}, "train": {"seed": 1}}
    )
    _write(tmp_path / "b.yaml", {"data": {"batch_size": 6}, "losses": [{"name": "kd"}, {"name": "cwd"}]})
    path = _write(
        tmp_path / "run.yaml",
        {"base": ["sub/a.yaml", "b.yaml"], "losses": [{"name": "hwd"}], "teacher": {"checkpoint": "t.pth"}},
    )
    cfg = load_config(path)
    assert cfg.data.batch_size == 6 and cfg.data.crop_size == [8, 8] and cfg.train.seed == 1
    assert cfg.losses == [{"name": "hwd"}]


def test_base_cycles_and_missing_bases_are_errors(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope\.yaml not found \(named in"):
        load_config(tmp_path / "c.yaml")


def test_saved_config_loads_back_identical(tmp_path: Path) -> None:
    parts = ["dataset=cityscapes", "student=deeplabv3_r18", "method=hwd"]
    cfg = load_config(None, [*parts, "train.seed=3", "optim.lr=1e-3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_default_output_dir_mirrors_the_config_path() -> None:
    assert (
        default_output_dir("configs/cityscapes/deeplabv3_r18_cwd.yaml") == "runs/cityscapes/deeplabv3_r18_cwd"
    )
    assert default_output_dir("/abs/configs/demo/kd.yaml") == "runs/demo/kd"
    assert default_output_dir("elsewhere/my_run.yaml") == "runs/my_run"


STUDENTS = sorted(p.stem for p in (CONFIGS / "_students").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIGS / "_methods").glob("*.yaml"))
DATASETS = ("cityscapes", "voc", "ade20k", "cocostuff")


def test_the_papers_grid_is_composed_not_stored() -> None:
    assert {"deeplabv3_r18", "pspnet_r18", "deeplabv3_mbv2", "pspnet_mbv2"} <= set(STUDENTS)
    assert {"baseline", "kd", "cwd", "hwd", "lad", "cad"} <= set(METHODS)
    for dataset in DATASETS:
        assert (CONFIGS / dataset / "_base.yaml").is_file()
        stored = {p.stem for p in (CONFIGS / dataset).glob("*.yaml")}
        assert not {f"{s}_{m}" for s in STUDENTS for m in METHODS} & stored  # one way to say a run
    assert {p.stem for p in (CONFIGS / "demo").glob("*.yaml")} >= {"teacher", "baseline", "kd", "cwd", "hwd"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_student_and_method_composes_on_every_dataset(dataset: str) -> None:
    from segkd.distill.losses import LOSSES
    from segkd.distill.models import MODELS

    base = load_config(CONFIGS / dataset / "_base.yaml")
    for student in STUDENTS:
        for method in METHODS:
            cfg = load_config(None, [f"dataset={dataset}", f"student={student}", f"method={method}"])
            assert cfg.student.name in MODELS and (cfg.data.dataset, cfg.data.root) == (
                base.data.dataset,
                base.data.root,
            )
            assert all(spec["name"] in LOSSES for spec in cfg.losses)
            assert cfg.train.output_dir == f"runs/{dataset}/{student}_{method}"


def test_composition_merges_the_parts_in_order_then_the_overrides(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    for folder in ("_students", "_methods", "mine"):
        (root / folder).mkdir(parents=True)
    _write(
        root / "mine" / "_base.yaml", "data: {dataset: demo, batch_size: 2}\nteacher: {checkpoint: t.pth}\n"
    )
    _write(root / "_students" / "small.yaml", "student: {name: deeplabv3_mbv2}\ndata: {batch_size: 3}\n")
    _write(root / "_methods" / "cwd.yaml", "losses: [{name: cwd, tau: 4.0}]\n")
    _write(root / "_methods" / "kd.yaml", "losses: [{name: kd}]\n")
    _write(root / "mine" / "_kd.yaml", "losses: [{name: kd, tau: 2.0}]\n")  # the dataset's own kd
    cfg = load_config(None, ["method=cwd", "data.batch_size=5", "dataset=mine", "student=small"], root=root)
    assert cfg.student.name == "deeplabv3_mbv2" and cfg.data.dataset == "demo"
    assert cfg.data.batch_size == 5 and cfg.losses == [{"name": "cwd", "tau": 4.0}]
    assert cfg.train.output_dir == "runs/mine/small_cwd"
    own = load_config(None, ["dataset=mine", "student=small", "method=kd"], root=root)
    assert own.losses == [{"name": "kd", "tau": 2.0}]
    # after a --config file, and named after it
    recipe = _write(
        tmp_path / "recipe.yaml",
        "student: {name: pspnet_r18}\ndata: {batch_size: 7}\nteacher: {checkpoint: t.pth}\n",
    )
    cfg = load_config([recipe], ["student=small", "method=kd"], root=root)
    assert cfg.student.name == "deeplabv3_mbv2" and cfg.data.batch_size == 3
    assert cfg.train.output_dir == "runs/recipe_small_kd"
    # several --config files merge in order
    first = _write(tmp_path / "first.yaml", "data: {batch_size: 9, dataset: voc}\n")
    cfg = load_config([first, recipe], [])
    assert (cfg.data.batch_size, cfg.data.dataset, cfg.student.name) == (7, "voc", "pspnet_r18")


def test_a_misspelt_part_names_the_closest_one(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"method=hwdd: no configs/_methods/hwdd.yaml; did you mean 'hwd'\\?"
    ):
        load_config(None, ["dataset=cityscapes", "student=deeplabv3_r18", "method=hwdd"])
    with pytest.raises(ConfigError, match=r"dataset=cityscape: .*did you mean 'cityscapes'\\?"):
        load_config(None, ["dataset=cityscape"])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_recipe_loads_and_names_registered_parts(path: Path) -> None:
    from segkd.distill.losses import LOSSES, loss_params
    from segkd.distill.models import MODELS

    cfg = load_config(path)
    assert cfg.student.name in MODELS
    for spec in cfg.losses:
        assert spec["name"] in LOSSES
        assert set(spec) - {"name", "key"} <= set(loss_params(spec["name"])), spec
    assert cfg.distill == bool(cfg.losses)
    if path.parent.name != "demo":
        assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == pytest.approx(1e-4)
        assert cfg.data.scale_range == [0.5, 2.0] and cfg.optim.power == 0.9


def test_method_files_build_their_losses() -> None:
    from segkd.distill.losses import KDCriterion

    for path in sorted((CONFIGS / "_methods").glob("*.yaml")):
        specs = yaml.safe_load(path.read_text()).get("losses", [])
        crit = KDCriterion(specs, student_channels=128, teacher_channels=256, num_classes=19)
        assert len(crit.terms) == len(specs), path.name


@pytest.mark.parametrize("name", ["1gpu", "8gpu", "2machines"])
def test_accelerate_configs_parse(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert (cfg.num_processes, cfg.num_machines) == {"1gpu": (1, 1), "8gpu": (8, 1), "2machines": (16, 2)}[
        name
    ]


def test_loss_parameters_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    # The first spelling most users try; the project's own docstring once used it.
    path = _write(
        tmp_path / "run.yaml",
        "teacher: {checkpoint: t.pth}\ntrain: {max_iters: 0}\nlosses:\n"
        "  - {name: cwd, temperature: 4.0}\n  - {name: kd, tau: -1}\n  - {name: hwdd}\n"
        "  - {name: cwd, source: feats}\n",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 5, lines  # every problem, the loss ones with the rest
    assert "train.max_iters must be positive" in lines[0]
    assert "losses.0 (cwd)" in lines[1] and "'temperature' (did you mean 'tau'?)" in lines[1]
    assert "losses.1 (kd)" in lines[2] and "tau=-1 is invalid" in lines[2]
    assert "losses.2" in lines[3] and "Did you mean 'hwd'?" in lines[3]
    assert "losses.3 (cwd)" in lines[4] and "not 'feats'" in lines[4]


def test_two_terms_with_one_name_are_refused_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.yaml", "teacher: {checkpoint: t.pth}\nlosses: [{name: kd}, {name: kd}]\n")
    with pytest.raises(ConfigError, match="second term named 'kd'"):
        load_config(path)
    ok = _write(
        tmp_path / "ok.yaml", "teacher: {checkpoint: t.pth}\nlosses: [{name: kd}, {name: kd, key: kd2}]\n"
    )
    assert [spec["name"] for spec in load_config(ok).losses] == ["kd", "kd"]


def test_a_loss_typo_fails_before_the_data_is_read(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "no-such-data"
    res = subprocess.run(
        [sys.executable, str(REPO / "distill" / "train.py"), "--config", str(CONFIGS / "demo" / "cwd.yaml"),
         f"data.root={missing}", f"train.output_dir={tmp_path / 'run'}", "losses.0.temperature=2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "did you mean 'tau'?" in res.stderr and str(missing) not in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_registered_model_is_a_student_without_a_recipe_file() -> None:
    assert not (CONFIGS / "_students" / "pspnet_r50.yaml").exists()  # registered, no file
    cfg = load_config(None, ["dataset=voc", "student=pspnet_r50", "method=kd"])
    assert cfg.student.name == "pspnet_r50" and cfg.train.output_dir == "runs/voc/pspnet_r50_kd"
    with pytest.raises(ConfigError, match="student=pspnet_r5: .*did you mean"):
        load_config(None, ["student=pspnet_r5"])


def test_a_nan_learning_rate_is_one_message() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.lr=.nan", "optim.weight_decay=.inf"])
    lines = [line.strip() for line in str(e.value).splitlines()[1:]]
    assert lines == ["defaults: optim.lr must be positive, got nan",
                     "defaults: optim.weight_decay must be a finite number, got inf"]  # fmt: skip


def test_another_student_drops_the_previous_students_architecture_options() -> None:
    # the demo recipes give their DeepLabV3-R18 a width and a stride that a SegFormer does not take
    cfg = load_config(CONFIGS / "demo" / "cwd.yaml", ["student=segformer_b0"])
    assert (
        cfg.student.name == "segformer_b0" and cfg.student.width is None and cfg.student.output_stride is None
    )
    composed = load_config(None, ["dataset=demo", "student=pidnet_s", "method=kd"])
    assert composed.student.width is None and composed.student.name == "pidnet_s"
    same = load_config(CONFIGS / "demo" / "cwd.yaml", ["student.width=0.5"])
    assert same.student.width == 0.5  # a dotted override still sets it


def test_aux_false_is_given_only_to_models_that_have_an_auxiliary_head() -> None:
    from segkd.distill.checks import takes_option

    assert takes_option("deeplabv3_r18", "aux", False) and takes_option("pidnet_s", "aux", False)
    assert not takes_option("bisenetv2", "aux", False)


@pytest.mark.parametrize(
    "student",
    ["pidnet_s", "pidnet_m", "pidnet_l", "ddrnet_23_slim", "ddrnet_23", "bisenetv2", "stdc1", "stdc2"],
)
def test_official_schedule_of_each_real_time_student(student: str) -> None:
    """``schedule=official`` merges the repository's own schedule over the dataset's (read from each repository's
    config: PIDNet/DDRNet 484 epochs at batch 12, BiSeNetV2 150k iterations at 16, STDC 60k at 48)."""
    cfg = load_config(None, ["dataset=cityscapes", f"student={student}", "method=cwd", "schedule=official"])
    expected = {"pidnet": ([1024, 1024], 12, 119548, 0.01), "ddrnet": ([1024, 1024], 12, 119548, 0.01),
                "bisenetv2": ([512, 1024], 16, 150000, 5e-3), "stdc": ([512, 1024], 48, 60000, 0.01)}  # fmt: skip
    crop, batch, iters, lr = next(v for k, v in expected.items() if student.startswith(k))
    got = (cfg.data.crop_size, cfg.data.batch_size, cfg.train.max_iters, cfg.optim.lr)
    assert got == (crop, batch, iters, lr)
    assert cfg.optim.weight_decay == 5e-4 and cfg.student.pretrained.startswith("pretrained/")
    assert cfg.losses and cfg.task.loss == "ohem"  # the method and the student's task losses are kept
    assert cfg.train.output_dir == f"runs/cityscapes/{student}_cwd_official"


def test_official_schedule_needs_a_student_that_has_one() -> None:
    with pytest.raises(ConfigError, match="give dataset= and student= too"):
        load_config(None, ["student=pidnet_s", "schedule=official"])
    with pytest.raises(ConfigError, match="deeplabv3_r18 has no official schedule on cityscapes"):
        load_config(None, ["dataset=cityscapes", "student=deeplabv3_r18", "schedule=official"])
